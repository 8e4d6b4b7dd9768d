"""Convert MediaPipe's face landmark network into exaug's torch weights (exaug/weights/face_mesh.pt).

Run once by a maintainer, never at run time. Needs dev-only packages: ``tflite`` (flatbuffer
parser) and ``ai-edge-litert`` (the reference interpreter), and the mediapipe 0.10.21 wheel, the last
release that ships the face models (later ones fetch them from a hub at run time)::

    pip download --no-deps mediapipe==0.10.21 -d /tmp/mp
    pip install tflite ai-edge-litert
    python scripts/convert_face_mesh.py /tmp/mp/mediapipe-0.10.21-*.whl

The weights are float16 in the tflite file (dequantised at load), so they are stored as float16
without loss. Before writing, the torch module is checked against the reference interpreter on real
faces from ../shared/data; the reference landmarks are written to tests/data/face_mesh_reference.npz
so the tests can hold the shipped module to them without litert.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exaug.faces.mesh import INPUT_SIZE, WEIGHTS, FaceMesh  # noqa: E402
from exaug.io.atomic import atomic_write  # noqa: E402
from exaug.io.images import load_image  # noqa: E402

TFLITE_MEMBER = "mediapipe/modules/face_landmark/face_landmark.tflite"
CONNECTIONS_MEMBER = "mediapipe/python/solutions/face_mesh_connections.py"
LICENSE_MEMBER = "mediapipe-0.10.21.dist-info/LICENSE"
REFERENCE = REPO / "tests" / "data" / "face_mesh_reference.npz"
# Real faces to check against: CK+ crops (tight, greyscale) and people photos (colour, loose).
CHECK_IMAGES = ("expressions/ckplus128/neutral/S010_002_00000001.png",
                "expressions/ckplus128/surprise/S010_002_00000014.png",
                "expressions/ckplus128/happy/S011_006_00000013.png",
                "expressions/ckplus128/anger/S010_004_00000019.png")


def _layer_names() -> dict[str, tuple[str, str]]:
    """exaug module prefix -> (tflite conv layer, tflite PReLU layer or ""), from the graph's wiring.

    The backbone's block k uses depthwise_conv2d_k, conv2d_{k+1} and p_re_lu_{k+1}; the heads' layers
    were numbered out of order by Keras, so they are listed as the graph connects them.
    """
    names: dict[str, tuple[str, str]] = {"stem.1": ("conv2d_1", ""), "stem.2": ("", "p_re_lu_1")}
    for block in range(14):
        k = block + 1
        names[f"backbone.{block}.depthwise"] = (f"depthwise_conv2d_{k}", "")
        names[f"backbone.{block}.pointwise"] = (f"conv2d_{k + 1}", "")
        names[f"backbone.{block}.activation"] = ("", f"p_re_lu_{k + 1}")
    heads = {
        "landmark_head": [("block", 15, 16, 16), ("block", 16, 17, 17), ("block", 17, 18, 18),
                          ("projection", None, 19, 19), ("block", 18, 20, 20), ("out", None, 21, None)],
        "score_head": [("block", 23, 28, 26), ("projection", None, 29, 27), ("block", 24, 30, 28),
                       ("out", None, 31, None)],
    }
    for head, layers in heads.items():
        for index, (kind, depthwise, conv, prelu) in enumerate(layers):
            prefix = f"{head}.{index}"
            if kind == "block":
                names[f"{prefix}.depthwise"] = (f"depthwise_conv2d_{depthwise}", "")
                names[f"{prefix}.pointwise"] = (f"conv2d_{conv}", "")
                names[f"{prefix}.activation"] = ("", f"p_re_lu_{prelu}")
            elif kind == "projection":
                names[f"{prefix}.conv"] = (f"conv2d_{conv}", "")
                names[f"{prefix}.activation"] = ("", f"p_re_lu_{prelu}")
            else:
                names[prefix] = (f"conv2d_{conv}", "")
    return names


def read_tflite_tensors(model_bytes: bytes) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph by name (float16 weights as stored)."""
    import tflite

    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    graph = model.Subgraphs(0)
    tensors = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, np.ndarray) and data.size:
            dtype = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32,
                     tflite.TensorType.INT32: np.int32}[tensor.Type()]
            tensors[tensor.Name().decode()] = data.view(dtype).reshape(tensor.ShapeAsNumpy())
    return tensors


def to_state_dict(tensors: dict[str, np.ndarray], module: FaceMesh) -> dict[str, torch.Tensor]:
    """TFLite layouts (conv OHWI, depthwise 1HWC, PReLU 11C) to torch's (OIHW, C1HW, C)."""
    state = {}
    for prefix, (conv, prelu) in _layer_names().items():
        if conv:
            kernel = tensors[f"{conv}/Kernel"]
            if conv.startswith("depthwise"):
                kernel = kernel.transpose(3, 0, 1, 2)  # 1,H,W,C -> C,1,H,W
            else:
                kernel = kernel.transpose(0, 3, 1, 2)  # O,H,W,I -> O,I,H,W
            state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel).copy())
            state[f"{prefix}.bias"] = torch.from_numpy(tensors[f"{conv}/Bias"].copy())
        else:
            state[f"{prefix}.weight"] = torch.from_numpy(tensors[f"{prelu}/Alpha"].reshape(-1).copy())
    expected = module.state_dict()
    if set(state) != set(expected):
        raise SystemExit(f"layer mismatch: missing {set(expected) - set(state)}, extra {set(state) - set(expected)}")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise SystemExit(f"{name}: tflite shape {tuple(value.shape)} != torch {tuple(expected[name].shape)}")
    return state


def triangles_from(connections_source: str) -> torch.Tensor:
    """MediaPipe's tessellation is stored as edges; its triangles are the edge triples that close."""
    body = re.search(r"FACEMESH_TESSELATION = frozenset\(\[(.*?)\]\)", connections_source, re.S).group(1)
    edges = {tuple(sorted(map(int, pair))) for pair in re.findall(r"\((\d+), (\d+)\)", body)}
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    return torch.tensor(sorted(triangles), dtype=torch.int16)


def reference_inputs(data: Path) -> np.ndarray:
    """The check images as the module sees them: (n, 192, 192, 3) float32 in [0, 1], resized by
    FaceMesh's own resize so torch and litert get the very same pixels."""
    faces = [torch.from_numpy(load_image(data / name)).permute(2, 0, 1).float() for name in CHECK_IMAGES]
    resized = [torch.nn.functional.interpolate(face[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                               align_corners=False, antialias=face.shape[-1] > INPUT_SIZE)[0]
               for face in faces]
    return (torch.stack(resized) / 255.0).permute(0, 2, 3, 1).numpy().astype(np.float32)


def run_litert(model_bytes: bytes, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    (entry,) = interpreter.get_input_details()
    outputs = {detail["name"]: detail["index"] for detail in interpreter.get_output_details()}
    landmarks, scores = [], []
    for image in inputs:
        interpreter.set_tensor(entry["index"], image[None])
        interpreter.invoke()
        landmarks.append(interpreter.get_tensor(outputs["conv2d_21"]).reshape(468, 3))
        scores.append(1 / (1 + np.exp(-interpreter.get_tensor(outputs["conv2d_31"]).item())))
    return np.stack(landmarks), np.array(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="mediapipe-0.10.21 wheel (or the face_landmark.tflite itself)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()

    if args.wheel.suffix == ".whl":
        with zipfile.ZipFile(args.wheel) as wheel:
            model_bytes = wheel.read(TFLITE_MEMBER)
            connections = wheel.read(CONNECTIONS_MEMBER).decode()
    else:
        raise SystemExit("pass the mediapipe wheel: the tessellation comes from its face_mesh_connections.py")
    module = FaceMesh(weights=None)
    state = to_state_dict(read_tflite_tensors(model_bytes), module)
    module.load_state_dict({name: value.float() for name, value in state.items()})

    inputs = reference_inputs(args.data)
    want_landmarks, want_scores = run_litert(model_bytes, inputs)
    with torch.no_grad():
        # Feed the 192-pixel tensors directly (no resize) and undo the pixel-centre shift.
        got = module(torch.from_numpy(inputs).permute(0, 3, 1, 2) * 255.0)
    got_landmarks = got.landmarks.numpy().copy()
    got_landmarks[..., :2] += 0.5
    error = np.abs(got_landmarks - want_landmarks).max()
    score_error = np.abs(got.scores.numpy() - want_scores).max()
    print(f"max landmark difference to litert: {error:.2e} px at 192; score difference {score_error:.2e}; "
          f"scores {np.round(want_scores, 3).tolist()}")
    if error > 0.05 or score_error > 1e-3 or want_scores.min() < 0.5:
        raise SystemExit("the torch module does not match the reference interpreter: not written")

    payload = {"state_dict": {name: value.half() for name, value in state.items()},
               "triangles": triangles_from(connections),
               "source": "mediapipe 0.10.21 wheel, " + TFLITE_MEMBER}
    atomic_write(args.out, lambda handle: torch.save(payload, handle))
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.array(CHECK_IMAGES), landmarks=want_landmarks.astype(np.float32),
                        scores=want_scores.astype(np.float32))
    atomic_write(REFERENCE, lambda handle: handle.write(buffer.getvalue()))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), {len(payload['triangles'])} triangles, and {REFERENCE}")


if __name__ == "__main__":
    main()
