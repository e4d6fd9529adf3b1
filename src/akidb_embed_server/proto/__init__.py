"""The gRPC API of ``akidb-embed serve`` (package ``akidb.embed.v1``, ``embed.proto``).

Generated with grpcio-tools and committed: ``embed_pb2`` (messages, needs protobuf) and
``embed_pb2_grpc`` (``EmbedderStub`` for clients, needs grpcio). Importing this package
imports neither::

    import grpc
    from akidb_embed_server.proto import embed_pb2, embed_pb2_grpc

    with grpc.insecure_channel("127.0.0.1:9090") as channel:
        stub = embed_pb2_grpc.EmbedderStub(channel)
        reply = stub.Embed(embed_pb2.EmbedRequest(inputs=["hello"]), timeout=10)
        vector = list(reply.embeddings[0].values)
"""
