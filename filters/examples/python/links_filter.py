#!/usr/bin/env python3
"""A Sekisho filter in Python: scores text by how many links it carries.

It implements sekisho.filter.v1.Filter from the .proto files alone (stubs are generated
at start-up with grpcio-tools), which is the point: the proto is the whole contract.

    python3 links_filter.py --listen 127.0.0.1:50071

Config (per call, from the chain): {"max_links": 2}. Score = min(1, links / max_links).
"""

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))
LINK = re.compile(r"(?i)\b(?:https?://|www\.)\S+")
DEFAULT_CONFIG = {"max_links": 2}
SCHEMA = {
    "type": "object",
    "properties": {"max_links": {"type": "integer", "minimum": 1, "default": 2}},
    "additionalProperties": False,
}


def load_stubs():
    out = tempfile.mkdtemp(prefix="sekisho-py-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "sekisho/filter/v1/filter.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/api/field_behavior.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    pb = importlib.import_module("sekisho.filter.v1.filter_pb2")
    rpc = importlib.import_module("sekisho.filter.v1.filter_pb2_grpc")
    return pb, rpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:50071")
    parser.add_argument("--name", default="links")
    args = parser.parse_args()
    pb, rpc = load_stubs()
    from google.protobuf import json_format

    class Links(rpc.FilterServicer):
        def Describe(self, request, context):
            return pb.FilterDescriptor(
                name=args.name,
                version="0.1.0",
                content_types=["text/*"],
                config_schema=json.dumps(SCHEMA),
                labels=["link_count"],
                max_batch_size=1,
                info={"language": "python"},
                default_config=json.dumps(DEFAULT_CONFIG),
            )

        def Apply(self, request, context):
            content = request.content
            if not content.content_type.startswith("text/"):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"filter `{args.name}` accepts text/*, not `{content.content_type}`",
                )
            which = content.WhichOneof("payload")
            if which == "text":
                text = content.text
            elif which == "data":
                text = content.data.decode("utf-8", "replace")
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected text")
            config = dict(DEFAULT_CONFIG)
            if request.HasField("config"):
                override = json_format.MessageToDict(request.config)
                unknown = set(override) - set(DEFAULT_CONFIG)
                if unknown:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"config: unknown field `{sorted(unknown)[0]}`",
                    )
                config.update(override)
            max_links = int(config["max_links"])
            if max_links < 1:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "config: max_links must be >= 1")
            count = len(LINK.findall(text))
            return pb.ApplyResponse(
                score=min(1.0, count / max_links), labels={"link_count": float(count)}
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_FilterServicer_to_server(Links(), server)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"sekisho filter {args.name} listening on http://{host}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
