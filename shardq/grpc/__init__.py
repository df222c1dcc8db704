"""The gRPC API (docs/grpc.md): a gateway process under the supervisor that serves
proto/shardq/v1/shardq.proto and speaks the shardq protocol to the shards.

Only ``process`` may be imported without grpcio installed (it is the optional ``shardq[grpc]``
extra); the other modules import grpc at their top.
"""
