"""The descriptor pool of the Open Inference Protocol's gRPC messages (``grpc_service_pb2``,
``model_config_pb2``): our own, not protobuf's default one, so that tritonclient's generated modules
(the same message names) can be imported in the same process."""
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
