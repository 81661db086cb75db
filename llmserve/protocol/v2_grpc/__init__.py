"""Generated Open Inference Protocol gRPC messages (see README.md): `from llmserve.protocol.v2_grpc import
open_inference_grpc_pb2`."""
