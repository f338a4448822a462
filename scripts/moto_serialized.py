"""A DynamoDB-compatible test server: moto, with its requests handled one at a time.

moto's own server answers on several threads and checks a conditional write's condition
and applies its update as separate steps, so two concurrent conditional writes can both
succeed, which DynamoDB never allows. db-locks' tests depend on that atomicity, so this
wrapper puts one lock around every request. Usage: python3 moto_serialized.py PORT
"""
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

backend = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def app(environ, start_response):
    with one_at_a_time:
        # Drain the response inside the lock: moto may produce it lazily.
        return list(backend(environ, start_response))


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
