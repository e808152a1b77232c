"""Run inside a virtualenv holding KServe's Python package (not the project's): KServe's own clients
against a running imgcls server. Prints one JSON object with what they answered.

    python kserve_check.py HTTP_URL GRPC_TARGET MODEL JPEG_FILE
"""
from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: str, jpeg: bytes, request_id: str) -> InferRequest:
    tensor = InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg], dtype=np.object_), binary_data=True)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=request_id)


async def main(http_url: str, grpc_target: str, model: str, jpeg_path: str) -> dict:
    jpeg = open(jpeg_path, "rb").read()
    out: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as rest:
        out["rest_live"] = await rest.is_server_live(http_url)
        out["rest_ready"] = await rest.is_server_ready(http_url)
        out["rest_model_ready"] = await rest.is_model_ready(http_url, model)
        answer = await rest.infer(http_url, request(model, jpeg, "kserve-rest"), model_name=model)
        out["rest"] = {"model_name": answer.model_name, "id": answer.id,
                       "outputs": [o.name for o in answer.outputs], "probabilities": answer.outputs[0].as_numpy().tolist()}
        out["rest_unknown_model_ready"] = await rest.is_model_ready(http_url, "no-such-model")  # a 4xx: False
    client = InferenceGRPCClient(grpc_target, timeout=60)
    try:
        out["grpc_live"] = await client.is_server_live()
        out["grpc_ready"] = await client.is_server_ready()
        out["grpc_model_ready"] = await client.is_model_ready(model)
        answer = await client.infer(request(model, jpeg, "kserve-grpc"))
        out["grpc"] = {"model_name": answer.model_name, "id": answer.id,
                       "outputs": [o.name for o in answer.outputs], "probabilities": answer.outputs[0].as_numpy().tolist()}
    finally:
        await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
