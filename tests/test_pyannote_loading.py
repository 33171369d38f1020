"""Where pyannote weights come from and how loading fails: local files and folders, a fake
Hugging Face hub (real huggingface_hub exceptions), wrong files, malicious pickles."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, List

import pytest
import torch

from streamer.errors import ModelLoadError
from streamer.models.pyannote import load_embedding, load_segmentation
from streamer.models.pyannote.checkpoint import RestrictedUnpickler, Stub, read_checkpoint
from tests.checkpoints import write_checkpoint

REPO = "pyannote/segmentation-3.0"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_checkpoint(root / kind / "pytorch_model.bin", kind)
            for kind in ("segmentation-3.0", "segmentation-2", "wespeaker", "xvector")}


# ---------------------------------------------------------------- local files and folders

def test_file_and_folder_load_the_same_model(checkpoints: dict[str, Path]) -> None:
    by_file = load_segmentation(checkpoints["segmentation-3.0"])
    by_folder = load_segmentation(str(checkpoints["segmentation-3.0"].parent))
    assert by_file.num_speakers == by_folder.num_speakers == 3
    assert by_file.frames == by_folder.frames
    assert by_folder.describe()["source"].endswith("pytorch_model.bin")


def test_folder_without_checkpoint_says_which_files_it_holds(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"has no pytorch_model\.bin.*model\.ckpt"):
        load_segmentation(tmp_path)


def test_missing_local_path_is_not_taken_for_a_repo(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="x.bin: no such file or folder$"):
        load_embedding(str(tmp_path / "nope" / "deeper" / "x.bin"))


def test_repo_like_path_is_local_unless_it_says_hf(fake_hub: Any, checkpoints: dict[str, Path],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``owner/name`` is a relative path: missing, it says so (and how to ask the hub)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^pyannote/segmentation-3\.0: no such file or "
                                             r"folder; .* write hf:pyannote/segmentation-3\.0$"):
        load_segmentation(REPO)
    local = tmp_path / "pyannote" / "segmentation-3.0"
    local.mkdir(parents=True)
    (local / "pytorch_model.bin").write_bytes(checkpoints["segmentation-3.0"].read_bytes())
    assert load_segmentation(REPO).num_speakers == 3
    assert fake_hub.calls == []
    for bad in ("hf:", "hf:pyannote", "hf:/etc/passwd", "hf:../x/y"):
        with pytest.raises(ModelLoadError, match="is not a Hugging Face repo id"):
            load_segmentation(bad)
    assert fake_hub.calls == []


def test_unreadable_checkpoint_says_permission_denied(checkpoints: dict[str, Path]) -> None:
    from tests.test_audio import unreadable_copies, unprivileged

    with unreadable_copies(checkpoints["xvector"]) as (readable, locked, hidden):
        assert unprivileged(lambda: load_embedding(readable).dimension) == "16"
        for path in (locked, hidden, hidden.parent):
            message = unprivileged(lambda: load_embedding(path))
            assert message.endswith("permission denied"), message


@pytest.mark.parametrize("kind,loader,says", [
    ("wespeaker", load_segmentation, r"speaker embedding checkpoint \(WeSpeakerResNet34\).*--embedding"),
    ("xvector", load_segmentation, r"embedding checkpoint \(XVectorSincNet\).*--embedding"),
    ("segmentation-3.0", load_embedding, r"segmentation checkpoint \(PyanNet\).*--segmentation"),
])
def test_wrong_kind_of_checkpoint(checkpoints: dict[str, Path], kind: str, loader: Any,
                                  says: str) -> None:
    with pytest.raises(ModelLoadError, match=says):
        loader(checkpoints[kind])


@pytest.mark.parametrize("content,says", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html>Access denied</html>", "not a PyTorch checkpoint"),
    (bytes(range(256)) * 4, "could not be read as a PyTorch checkpoint"),
], ids=["lfs-pointer", "html", "binary"])
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=says):
        load_segmentation(path)


def test_torch_file_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ModelLoadError, match="not a pyannote checkpoint"):
        load_embedding(path)


def test_unsupported_architecture_lists_supported_ones(checkpoints: dict[str, Path],
                                                       tmp_path: Path) -> None:
    checkpoint = read_checkpoint(checkpoints["segmentation-3.0"])
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": checkpoint.state_dict, "hyper_parameters": {},
                "pyannote.audio": {"architecture": {
                    "module": "pyannote.audio.models.segmentation", "class": "SSeRiouSS"}}},
               path)
    with pytest.raises(ModelLoadError, match=r"unsupported architecture.*SSeRiouSS.*PyanNet"):
        load_segmentation(path)


def test_architecture_detected_from_tensor_names(checkpoints: dict[str, Path],
                                                 tmp_path: Path) -> None:
    checkpoint = read_checkpoint(checkpoints["xvector"])
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": checkpoint.state_dict,
                "hyper_parameters": checkpoint.hyper_parameters}, path)
    model = load_embedding(path)
    assert model.architecture == "XVectorSincNet" and model.dimension == 16
    with pytest.raises(ModelLoadError, match="embedding checkpoint"):
        load_segmentation(path)


def test_segmentation_without_specifications_says_so(checkpoints: dict[str, Path],
                                                     tmp_path: Path) -> None:
    checkpoint = read_checkpoint(checkpoints["segmentation-2"])
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": checkpoint.state_dict,
                "hyper_parameters": checkpoint.hyper_parameters}, path)
    with pytest.raises(ModelLoadError, match="no task specifications"):
        load_segmentation(path)


def test_bad_backend_and_device(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="backend"):
        load_segmentation(checkpoints["segmentation-2"], backend="tensorflow")
    with pytest.raises(ValueError, match="device"):
        load_segmentation(checkpoints["segmentation-2"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_segmentation(checkpoints["segmentation-2"], device="cuda")
        assert load_segmentation(checkpoints["segmentation-2"], device="auto").device.type == "cpu"


def test_onnx_backend_without_onnxruntime(checkpoints: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError, match="pip install onnx onnxruntime"):
        load_embedding(checkpoints["xvector"], backend="onnx")


# ---------------------------------------------------------------- restricted unpickling

class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_zip_checkpoint_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match=r"refusing to load .*(posix|os)\.system"):
        load_segmentation(path)
    assert not marker.exists()


class _CreatesAFile(torch.nn.Module):
    """Scripted, its ``__setstate__`` creates the file it names: code that
    ``torch.jit.load`` runs while it loads the archive."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.mapped = torch.zeros(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> List[str]:
        return [self.target]

    @torch.jit.export
    def __setstate__(self, state: List[str]) -> None:
        self.target = state[0]
        self.training = False
        self.mapped = torch.from_file(state[0], True, 16)


def write_torchscript_payload(path: Path, marker: Path) -> Path:
    """A TorchScript archive that creates ``marker`` when torch loads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(_CreatesAFile(str(marker))), str(path))
    return path


def test_torchscript_archive_is_refused_before_its_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_torchscript_payload(tmp_path / "pytorch_model.bin", marker)
    for loader in (load_segmentation, load_embedding):
        with pytest.raises(ModelLoadError, match=r"refusing to load .*TorchScript archive"):
            loader(path)
        assert not marker.exists()
    with pytest.raises(ModelLoadError, match="TorchScript"):
        read_checkpoint(path)
    assert not marker.exists()
    # torch.load itself runs the archive's code: the payload is real
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert marker.exists()


def _rezip(source: Path, target: Path, edit: Any) -> Path:
    """Copy a torch.save zip, letting ``edit(name, data)`` drop (None), keep or rename
    entries; ``edit`` may also return a list of extra (name, data) entries."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            for name, data in edit(info.filename, old.read(info)) or []:
                new.writestr(name, data)
    return target


@pytest.mark.parametrize("edit,says", [
    (lambda n, d: [(n, d)] + ([("archive/code/__torch__.py", b"x")] if n.endswith("data.pkl")
                              else []), "TorchScript"),
    (lambda n, d: [(n, d)] + ([("archive/constants.pkl", d)] if n.endswith("data.pkl")
                              else []), "TorchScript"),
    (lambda n, d: [(n, d)] + ([("archive/extra/notes.txt", b"x")] if n.endswith("data.pkl")
                              else []), "extra/notes.txt"),
    (lambda n, d: [] if n.endswith("data.pkl") else [(n, d)], "no data.pkl"),
    (lambda n, d: [(n.replace("archive/data/0", "other/data/0"), d)], "one top folder"),
    (lambda n, d: [(n, d[:-4] if n.endswith("data/0") else d)], "bytes"),
], ids=["code", "constants", "unknown-entry", "no-data-pkl", "two-roots", "short-tensor"])
def test_zip_that_is_not_a_plain_checkpoint_is_refused(checkpoints: dict[str, Path],
                                                       tmp_path: Path, edit: Any,
                                                       says: str) -> None:
    source = tmp_path / "archive.bin"
    checkpoint = read_checkpoint(checkpoints["xvector"])
    torch.save({"state_dict": checkpoint.state_dict,
                "hyper_parameters": checkpoint.hyper_parameters}, source)
    path = _rezip(source, tmp_path / "pytorch_model.bin", edit)
    with pytest.raises(ModelLoadError, match=says):
        load_embedding(path)


def test_legacy_torch_save_format_still_loads(checkpoints: dict[str, Path],
                                              tmp_path: Path) -> None:
    checkpoint = read_checkpoint(checkpoints["xvector"])
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": checkpoint.state_dict,
                "hyper_parameters": checkpoint.hyper_parameters}, path,
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    loaded = read_checkpoint(path)
    assert loaded.state_dict.keys() == checkpoint.state_dict.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in checkpoint.state_dict.items())


def test_zip_checkpoint_tensors_are_read_exactly(checkpoints: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """Shared storages, views, several dtypes: the same tensors torch.load gives."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"w": base, "view": base[1:, ::2], "t": base.t(), "half": torch.ones(3).half(),
             "long": torch.arange(5), "bool": torch.tensor([True, False]),
             "empty": torch.zeros(0), "param": torch.nn.Parameter(torch.randn(2))}
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": state, "hyper_parameters": {"sample_rate": 16000}}, path)
    loaded = read_checkpoint(path).state_dict
    expected = torch.load(path, weights_only=True)["state_dict"]
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
        assert loaded[name].stride() == tensor.stride(), name
    assert loaded["view"].untyped_storage().data_ptr() == loaded["w"].untyped_storage().data_ptr()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_checkpoint_with_non_finite_weights_is_refused(checkpoints: dict[str, Path],
                                                       tmp_path: Path, value: float) -> None:
    checkpoint = read_checkpoint(checkpoints["segmentation-3.0"])
    meta = {"architecture": {"module": "pyannote.audio.models.segmentation.PyanNet",
                             "class": "PyanNet"},
            "specifications": checkpoint.specifications}
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": checkpoint.state_dict, "pyannote.audio": meta,
                "hyper_parameters": checkpoint.hyper_parameters}, path)
    assert load_segmentation(path).num_speakers == 3  # the same file, finite, loads
    name = "lstm.weight_ih_l1"
    broken = {k: v.clone() for k, v in checkpoint.state_dict.items()}
    broken[name].view(-1)[3] = value
    torch.save({"state_dict": broken, "pyannote.audio": meta,
                "hyper_parameters": checkpoint.hyper_parameters}, path)
    with pytest.raises(ModelLoadError, match=rf"'{name}'.*NaN or infinite"):
        load_segmentation(path)


def test_malicious_plain_pickle_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError):
        load_embedding(path)
    assert not marker.exists()
    # the same payload runs with a plain unpickler: the test payload is real
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"],
                   check=False)
    assert marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen"),
                                         ("torch", "load"), ("numpy", "load")])
def test_unpickler_refuses_other_globals(module: str, name: str) -> None:
    import io

    with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
        RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)


def test_pyannote_classes_become_inert_stubs() -> None:
    import io

    cls = RestrictedUnpickler(io.BytesIO(b"")).find_class("pyannote.audio.core.task", "Specifications")
    assert issubclass(cls, Stub)
    stub = cls("anything")
    stub.__setstate__({"duration": 10.0})
    assert stub.args == ("anything",) and stub.state == {"duration": 10.0}


# ---------------------------------------------------------------- fake Hugging Face hub

def _hub_error(name: str, message: str) -> Exception:
    errors = pytest.importorskip("huggingface_hub.errors")
    cls = getattr(errors, name)
    if not issubclass(cls, errors.HfHubHTTPError):
        return cls(message)
    response_type = errors.Response
    http = sys.modules[response_type.__module__.split(".")[0]]
    url = f"https://huggingface.co/{REPO}/resolve/main/pytorch_model.bin"
    try:
        response = response_type(403, request=http.Request("GET", url))
    except TypeError:  # requests-style Response (older huggingface_hub)
        response = response_type()
        response.status_code, response.url = 403, url
    return cls(message, response=response)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Any:
    hub = pytest.importorskip("huggingface_hub")

    class FakeHub:
        calls: list[dict[str, Any]] = []
        result: Path | Exception = Path("/nonexistent")

        def download(self, repo_id: str, filename: str, **kwargs: Any) -> str:
            self.calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
            if isinstance(self.result, Exception):
                raise self.result
            return str(self.result)

    fake = FakeHub()
    fake.calls = []
    monkeypatch.setattr(hub, "hf_hub_download", fake.download)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return fake


def test_hub_repo_id_downloads_pytorch_model_bin(fake_hub: Any, checkpoints: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    fake_hub.result = checkpoints["segmentation-3.0"]
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    model = load_segmentation(f"hf:{REPO}", revision="v3", cache_dir=tmp_path)
    assert model.powerset and model.num_speakers == 3
    call = fake_hub.calls[-1]
    assert (call["repo_id"], call["filename"]) == (REPO, "pytorch_model.bin")
    assert call["revision"] == "v3" and call["token"] == "hf_from_env"
    assert Path(call["cache_dir"]) == tmp_path
    fake_hub.result = checkpoints["wespeaker"]
    load_embedding("hf:pyannote/wespeaker-voxceleb-resnet34-LM@abc123", token="hf_flag")
    assert fake_hub.calls[-1]["revision"] == "abc123" and fake_hub.calls[-1]["token"] == "hf_flag"


def test_gated_repo_says_accept_conditions_and_set_token(fake_hub: Any) -> None:
    fake_hub.result = _hub_error("GatedRepoError", "Access to model is restricted.")
    with pytest.raises(ModelLoadError) as error:
        load_segmentation(f"hf:{REPO}")
    message = str(error.value)
    assert f"https://huggingface.co/{REPO}" in message and "accept" in message
    assert "HF_TOKEN" in message and "settings/tokens" in message
    with pytest.raises(ModelLoadError, match="token in use has no access"):
        load_segmentation(f"hf:{REPO}", token="hf_wrong")


@pytest.mark.parametrize("name", ["LocalEntryNotFoundError", "OfflineModeIsEnabled"])
def test_offline_hub_suggests_downloading_elsewhere(fake_hub: Any, name: str) -> None:
    fake_hub.result = _hub_error(name, "cannot find the requested files in the local cache")
    with pytest.raises(ModelLoadError) as error:
        load_embedding("hf:pyannote/wespeaker-voxceleb-resnet34-LM")
    message = str(error.value)
    assert "cannot reach the Hugging Face hub" in message
    assert "pytorch_model.bin" in message and "pass that folder path" in message


def test_unknown_repo_and_missing_file(fake_hub: Any) -> None:
    fake_hub.result = _hub_error("RepositoryNotFoundError", "404")
    with pytest.raises(ModelLoadError, match="no model repo 'pyannote/segmentation-3.0'"):
        load_segmentation(f"hf:{REPO}")
    fake_hub.result = _hub_error("RemoteEntryNotFoundError", "404 entry")
    with pytest.raises(ModelLoadError, match="has no pytorch_model.bin: it is not a pyannote model"):
        load_segmentation("hf:pyannote/speaker-diarization-3.1")


def test_hub_download_goes_through_the_same_checks(fake_hub: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fake_hub.result = write_torchscript_payload(tmp_path / "cache" / "pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_segmentation(f"hf:{REPO}")
    assert not marker.exists()


def test_hub_without_huggingface_hub_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelLoadError, match="pip install huggingface_hub"):
        load_segmentation(f"hf:{REPO}")


def test_import_downloads_nothing() -> None:
    code = ("import sys, streamer.models.pyannote as p; "
            "print('huggingface_hub' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False"]


def test_lightning_attribute_dict_hyper_parameters_are_read(checkpoints: dict[str, Path],
                                                            tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Older Lightning saved hparams as AttributeDict (a dict subclass): stubbed, still read."""
    import types

    module = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = module.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    module.AttributeDict = AttributeDict  # type: ignore[attr-defined]
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    checkpoint = read_checkpoint(checkpoints["xvector"])
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": checkpoint.state_dict, "dtype": torch.float32,
                "hyper_parameters": AttributeDict(checkpoint.hyper_parameters),
                "pyannote.audio": {"architecture": {"module": "x", "class": "XVectorSincNet"}},
                "callbacks": {"ModelCheckpoint": {"dirpath": Path("/ckpt")}}}, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    loaded = read_checkpoint(path)
    assert loaded.hyper_parameters == checkpoint.hyper_parameters
    assert load_embedding(path).dimension == 16
