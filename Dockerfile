# Orthanc with the cache plugin. The install steps are those of
# scripts/install.sh, which the test suite runs on Debian 12.
FROM orthancteam/orthanc

COPY . /tmp/orthanc-cache-plugin
RUN pip install --break-system-packages "/tmp/orthanc-cache-plugin[redis]" \
 && cp /tmp/orthanc-cache-plugin/example.py /etc/orthanc/cache-plugin.py \
 && rm -rf /tmp/orthanc-cache-plugin \
 && mkdir -p /var/lib/orthanc/cache

# Loads the Python plugin with the startup script; settings go in the
# CachePlugin section, e.g. ORTHANC__CACHE_PLUGIN__MAXIMUM_SIZE=2048.
ENV ORTHANC__PYTHON_SCRIPT=/etc/orthanc/cache-plugin.py
# Hits go on while Orthanc computes a miss (Python plugin 4.3 and later; see
# docs/deployment.md for the trade-off).
ENV ORTHANC__PYTHON__ALLOW_THREADS=true
