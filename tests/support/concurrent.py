"""Requests sent together, as several viewers opening one study at the same moment."""

from __future__ import annotations

import threading
from typing import List, Sequence, Union

import requests

from support.orthanc_server import OrthancServer


def get_together(servers: Union[OrthancServer, Sequence[OrthancServer]], path: str,
                 count: int) -> List[requests.Response]:
    """``count`` GETs of ``path`` sent at the same moment, each on its own connection, to
    ``servers`` in turn (the nodes of a cluster); the answers in the order they came."""
    nodes = [servers] if isinstance(servers, OrthancServer) else list(servers)
    barrier = threading.Barrier(count)
    answers: List[requests.Response] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def client(server: OrthancServer) -> None:
        with requests.Session() as session:
            session.trust_env = False
            try:
                barrier.wait(timeout=30)
                answer = session.get(server.url + path, headers={"Accept-Encoding": "identity"},
                                     timeout=120)
                with lock:
                    answers.append(answer)
            except BaseException as error:
                with lock:
                    errors.append(error)

    threads = [threading.Thread(target=client, args=(nodes[number % len(nodes)],))
               for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert errors == [] and len(answers) == count
    return answers
