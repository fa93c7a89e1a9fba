"""An OTLP/gRPC trace receiver for the tests: decodes every ExportTraceServiceRequest with the
protocol's own Python classes and writes each span as one JSON line to stdout.

    otlp_receiver.py PORT_FILE [--delay SECONDS] [--fail] [--fail-first N] [--reject] [--tls CERT_PEM KEY_PEM] [--quiet]

Listens on a free loopback port and writes it to PORT_FILE once serving. `--delay` makes each
export wait (a slow collector); `--fail` answers every export UNAVAILABLE (a collector in
trouble), `--fail-first N` only the first N (one that comes back); `--reject` accepts every export but answers that it dropped all its spans (a
partial success); `--tls` serves TLS with that certificate; `--quiet` decodes the spans and
writes nothing (a benchmark's collector). A span line: {"trace_id", "span_id",
"parent_span_id", "trace_state", "name", "kind", "service", "attributes": {key: value},
"status_code", "metadata": {the export's gRPC metadata, but grpc-*}} with ids in hex.
"""

import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()

def value_of(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind in ("array_value", "kvlist_value"):
        return str(value)
    if kind == "bytes_value":
        return value.hex()
    return value

class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, delay, fail, reject, quiet, fail_first=0):
        self.delay = delay
        self.fail = fail
        self.fail_first = fail_first
        self.reject = reject
        self.quiet = quiet

    def Export(self, request, context):
        if self.delay:
            time.sleep(self.delay)
        with LOCK:
            failing = self.fail_first > 0
            self.fail_first -= 1
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the test collector is starting")
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the test collector refuses")
        if self.quiet:
            return trace_service_pb2.ExportTraceServiceResponse()
        if self.reject:
            spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            response = trace_service_pb2.ExportTraceServiceResponse()
            response.partial_success.rejected_spans = spans
            response.partial_success.error_message = "the test collector keeps no span"
            return response
        metadata = {k: v for k, v in context.invocation_metadata() if not k.startswith("grpc-")}
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    line = {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "trace_state": span.trace_state,
                        "name": span.name,
                        "kind": span.kind,
                        "service": resource.get("service.name"),
                        "attributes": {a.key: value_of(a.value) for a in span.attributes},
                        "status_code": span.status.code,
                        "metadata": metadata,
                    }
                    with LOCK:
                        sys.stdout.write(json.dumps(line) + "\n")
                        sys.stdout.flush()
        return trace_service_pb2.ExportTraceServiceResponse()

def main():
    port_file = sys.argv[1]
    delay = float(sys.argv[sys.argv.index("--delay") + 1]) if "--delay" in sys.argv else 0.0
    fail = "--fail" in sys.argv
    fail_first = int(sys.argv[sys.argv.index("--fail-first") + 1]) if "--fail-first" in sys.argv else 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(delay, fail, "--reject" in sys.argv, "--quiet" in sys.argv, fail_first), server)
    if "--tls" in sys.argv:
        at = sys.argv.index("--tls")
        with open(sys.argv[at + 1], "rb") as f:
            cert = f.read()
        with open(sys.argv[at + 2], "rb") as f:
            key = f.read()
        credentials = grpc.ssl_server_credentials([(key, cert)])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))

    os.rename(port_file + ".tmp", port_file)
    server.wait_for_termination()

if __name__ == "__main__":
    main()
