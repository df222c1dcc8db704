"""Generated from proto/shardq/v1/shardq.proto by grpcio-tools: do not edit (scripts/gen_proto
writes them again; tests/unit/test_grpc_proto.py fails when they are not current)."""
