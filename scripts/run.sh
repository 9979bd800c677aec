#!/bin/sh
# Sets up and runs Orthanc with the cache plugin on http://localhost:8042
# (Debian 12 or 13, as root). Data in /var/lib/orthanc, cache in
# /var/lib/orthanc/cache.  HTTP_PORT=N serves on port N instead.
set -eu
cd "$(dirname "$0")/.."
./scripts/install.sh

# The Debian package starts its own Orthanc on port 8042: stop it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    systemctl stop orthanc
fi

port=${HTTP_PORT:-8042}
config=/etc/orthanc-cache-plugin
mkdir -p "$config" /var/lib/orthanc/db-v6
cp example.py "$config/cache-plugin.py"
cat > "$config/orthanc.json" <<JSON
{
  "Name": "Orthanc with cache plugin",
  "StorageDirectory": "/var/lib/orthanc/db-v6",
  "IndexDirectory": "/var/lib/orthanc/db-v6",
  "HttpPort": $port,
  "DicomServerEnabled": false,
  "RemoteAccessAllowed": false,
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
  "PythonScript": "$config/cache-plugin.py",
  "CachePlugin": { "Directory": "/var/lib/orthanc/cache" }
}
JSON
echo "Orthanc with the cache plugin: http://localhost:$port (configuration in $config/orthanc.json)"
exec /usr/sbin/Orthanc "$config/orthanc.json"
