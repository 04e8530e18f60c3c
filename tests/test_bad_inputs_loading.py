"""Every bad checkpoint a user can hand us ends in one clear line, and writes nothing outside the output folder.

The loading surface of the bad-input table (generation and nodes: tests/test_bad_inputs.py; training:
tests/test_bad_inputs_training.py and its siblings): crafted and damaged checkpoints, through the loader,
`deepgen info` and `deepgen generate`.  How a case runs and what it must come to: tests/bad_inputs_kit.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from bad_inputs_kit import EVIL_NAMES, Sandbox, crafted, header_json, name_of, run_case, truncate
from official_fixture import OFFICIAL, official_paths
from safetensors.torch import load_file, save_file

from deepgen import errors as E


def load(path, **kw):
    from deepgen.loading import load_model

    return lambda: load_model(path, dtype=torch.float32, **kw)


def load_official_file(path):
    from deepgen.loading import load_model

    paths = official_paths()
    return lambda: load_model(
        path, paths["vlm"], paths["diffusion"], dtype=torch.float32, connector_config={"num_attention_heads": 4}
    )


def official_tensors():
    return load_file(str(OFFICIAL / "model.safetensors"))


def case_tokenizer_name_climbs_out(s):
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({f"../../{EVIL_NAMES[0]}": "pwned"}))
    return load(crafted(s.converted, s.inputs, tokenizer_files=files)), E.CheckpointError, ["../../" + EVIL_NAMES[0]]


def case_tokenizer_name_absolute(s):
    target = str(Path("/tmp") / EVIL_NAMES[1])
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({target: "pwned"}))
    return load(crafted(s.converted, s.inputs, tokenizer_files=files)), E.CheckpointError, [target]


def case_tokenizer_name_through_cli_info(s):
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({f"../{EVIL_NAMES[0]}": "x"}))
    return s.cli("info", crafted(s.converted, s.inputs, tokenizer_files=files)), None, [f"../{EVIL_NAMES[0]}"]


def case_tokenizer_name_through_cli_generate(s):
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({f"/tmp/{EVIL_NAMES[1]}": "x"}))
    path = crafted(s.converted, s.inputs, tokenizer_files=files)
    return s.cli("generate", "--checkpoint", path, "--prompt", "a cat", "--steps", "1"), None, [EVIL_NAMES[1]]


def case_metadata_only_file(s):
    return (
        load(crafted(s.converted, s.inputs, "empty-model.safetensors", tensors={})),
        E.CheckpointError,
        ["empty-model.safetensors", "no tensors"],
    )


def case_future_format_version(s):
    return load(crafted(s.converted, s.inputs, format_version="99")), E.CheckpointError, ["'99'", "convert again"]


def case_header_configs_not_json(s):
    return load(crafted(s.converted, s.inputs, configs="{not json")), E.CheckpointError, ["'configs'", "JSON"]


def case_header_lacks_tokenizer(s):
    return load(crafted(s.converted, s.inputs, tokenizer_files=None)), E.CheckpointError, ["tokenizer_files"]


def case_header_unknown_config_part(s):
    configs = header_json(s.converted, "configs", lambda c: c.update({"plugin": {"x": 1}}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["plugin"]


def case_header_absurd_size(s):
    configs = header_json(s.converted, "configs", lambda c: c["transformer"].update({"pos_embed_max_size": 10**6}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["pos_embed_max_size", "1000000"]


def case_header_negative_size(s):
    configs = header_json(s.converted, "configs", lambda c: c["connector"].update({"num_hidden_layers": -3}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["num_hidden_layers"]


def case_header_unknown_dit_field(s):
    configs = header_json(s.converted, "configs", lambda c: c["transformer"].update({"run_this": "rm -rf /"}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["run_this"]


def case_header_foreign_tokenizer_class(s):
    def edit(files):
        config = json.loads(files["tokenizer_config.json"])
        config["tokenizer_class"] = "SomeRemoteTokenizer"
        files["tokenizer_config.json"] = json.dumps(config)

    files = header_json(s.converted, "tokenizer_files", edit)
    return load(crafted(s.converted, s.inputs, tokenizer_files=files)), E.CheckpointError, ["SomeRemoteTokenizer"]


def case_header_config_not_object(s):
    configs = header_json(s.converted, "configs", lambda c: c.update({"vae": [1, 2]}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["vae", "list"]


def case_official_truncated_safetensors(s):
    path = s.inputs / "model.safetensors"
    path.write_bytes((OFFICIAL / "model.safetensors").read_bytes()[:5000])
    return load_official_file(path), E.CheckpointError, ["model.safetensors", "truncated"]


def case_official_truncated_pt(s):
    path = s.inputs / "model.pt"
    path.write_bytes((OFFICIAL / "model.pt").read_bytes()[:20000])
    return load_official_file(path), E.CheckpointError, ["model.pt", "truncated"]


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch /tmp/{EVIL_NAMES[0]}",))


def case_pickle_with_code(s):
    path = s.inputs / "evil.pt"
    torch.save({"meta_queries": torch.zeros(2, 2), "payload": Payload()}, path)
    return load_official_file(path), E.CheckpointError, ["evil.pt", "Refused"]


def case_empty_checkpoint(s):
    (s.inputs / "zero.safetensors").write_bytes(b"")
    return load_official_file(s.inputs / "zero.safetensors"), E.CheckpointError, ["zero.safetensors", "empty"]


def case_unsupported_extension(s):
    (s.inputs / "model.onnx").write_bytes(b"onnx")
    return load_official_file(s.inputs / "model.onnx"), E.CheckpointError, ["'.onnx'"]


def case_missing_checkpoint(s):
    return load_official_file(s.inputs / "nowhere.safetensors"), E.NotFoundError, ["nowhere.safetensors"]


def case_foreign_model(s):
    path = s.inputs / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.weight": torch.zeros(2), "model.diffusion_model.x": torch.zeros(2)}, str(path))
    return load_official_file(path), E.CheckpointError, ["sdxl.safetensors", "conditioner.embedders.0.weight"]


def case_missing_tensor(s):
    tensors = official_tensors()
    del tensors["projector_2.weight"]
    save_file(tensors, str(s.inputs / "model.safetensors"))
    return load_official_file(s.inputs / "model.safetensors"), E.CheckpointError, ["projector_2.weight"]


def case_wrong_shape(s):
    tensors = official_tensors()
    tensors["projector_3.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(s.inputs / "model.safetensors"))
    return load_official_file(s.inputs / "model.safetensors"), E.CheckpointError, ["projector_3.weight"]


def case_official_without_vlm_folder(s):
    from deepgen.loading import load_model

    (s.inputs / "model.safetensors").write_bytes((OFFICIAL / "model.safetensors").read_bytes())
    return (lambda: load_model(s.inputs / "model.safetensors")), E.CheckpointError, ["Qwen2.5-VL-3B-Instruct"]


def case_truncated_lora(s):
    from deepgen.lora import load_lora

    path = s.inputs / "style.safetensors"
    save_file(
        {"transformer.a.lora_A.weight": torch.zeros(4, 8), "transformer.a.lora_B.weight": torch.zeros(8, 4)}, str(path)
    )
    truncate(path)
    return (lambda: load_lora(path)), E.CheckpointError, ["style.safetensors"]


def case_cli_info_truncated(s):
    path = s.inputs / "model.safetensors"
    path.write_bytes((OFFICIAL / "model.safetensors").read_bytes()[:3000])
    return s.cli("info", path), None, ["model.safetensors"]


LOADING = [
    case_tokenizer_name_climbs_out,
    case_tokenizer_name_absolute,
    case_tokenizer_name_through_cli_info,
    case_tokenizer_name_through_cli_generate,
    case_metadata_only_file,
    case_future_format_version,
    case_header_configs_not_json,
    case_header_lacks_tokenizer,
    case_header_unknown_config_part,
    case_header_absurd_size,
    case_header_negative_size,
    case_header_unknown_dit_field,
    case_header_foreign_tokenizer_class,
    case_header_config_not_object,
    case_official_truncated_safetensors,
    case_official_truncated_pt,
    case_pickle_with_code,
    case_empty_checkpoint,
    case_unsupported_extension,
    case_missing_checkpoint,
    case_foreign_model,
    case_missing_tensor,
    case_wrong_shape,
    case_official_without_vlm_folder,
    case_truncated_lora,
    case_cli_info_truncated,
]


@pytest.mark.parametrize("case", LOADING, ids=name_of)
def test_bad_input_gives_one_clear_line(case, converted, tmp_path, capsys):
    run_case(Sandbox(tmp_path, converted), case, capsys)


# ---- a header that is read, not refused -----------------------------------------------------------------


def test_tokenizer_config_paths_are_ignored(converted, tmp_path):
    """A header's tokenizer_config naming files elsewhere loads with the header's own tokenizer, reading nothing."""
    from deepgen.loading import load_model

    secret = tmp_path / "secret.json"
    secret.write_text("{not a tokenizer")

    def edit(files):
        config = json.loads(files["tokenizer_config.json"])
        config.update({"tokenizer_file": str(secret), "vocab_file": str(secret), "auto_map": {"AutoTokenizer": "x.Y"}})
        files["tokenizer_config.json"] = json.dumps(config)

    path = crafted(converted, tmp_path, tokenizer_files=header_json(converted, "tokenizer_files", edit))
    model = load_model(path, dtype=torch.float32)
    assert model.tokenizer("a red cat")["input_ids"]
