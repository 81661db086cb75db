"""Open Inference Protocol (V2) traffic through the gateway: REST (`/v2/...`, KServe V1 `:predict` / `:explain`)
and gRPC (`inference.GRPCInferenceService`), forwarded to the runtime replicas of the named service.

`router.attach_router` puts the REST routes on the app's fast path; `start_grpc` starts the gRPC server when
`GatewaySettings.grpc_port` is set (grpc is imported only then).
"""

from gateway.v2.router import attach_router, start_grpc

__all__ = ["attach_router", "start_grpc"]
