"""Protobuf message classes for the typed-payload tests, built at run time.

No ``protoc`` is needed: :mod:`tests.typed.protos.shop` describes ``shop.proto`` with
``descriptor_pb2`` and registers it in the default descriptor pool, which is exactly what a
generated ``shop_pb2`` module does when it is imported.
"""
