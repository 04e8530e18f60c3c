"""A small stand-in for ComfyUI's front end and executor, enough to check and run our UI-format workflows.

- `check_workflow`: the graph is a version-0.4 UI workflow; every node type exists (ours, or a core node whose
  real spec is in comfy_core_nodes); widgets_values map onto the widget inputs (control_after_generate values
  included) and each value is valid (combo membership, INT/FLOAT range, type); every link joins equal types and
  agrees with the nodes' inputs/outputs; every required socket is connected.
- `ui_to_api`: UI -> API prompt format as comfy-cli's workflow_to_api does (reference §4.3): widget values by
  input name in schema order (required, then optional), control_after_generate tokens dropped, links as
  [source id, slot], muted/bypassed and UI-only nodes skipped.
- `execute`: ComfyUI's execution model, simplified: the output nodes and their ancestors run once each in
  dependency order under torch.inference_mode(); VALIDATE_INPUTS runs first on constant inputs (ComfyUI's
  filtering by argument name); IS_CHANGED is called; lists follow ComfyUI's rules (outputs are lists of per-call results, a node runs once per
  element of its longest list input, OUTPUT_IS_LIST outputs are concatenated); hidden inputs are filled.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UI_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "GetNode", "SetNode"}
# The shipped training workflows train for hundreds of steps at 512 px, minutes on a CPU: the workflow tests
# (here and in a real ComfyUI, tests/comfyui) run them with these values; the graph and all else stay as shipped.
TRAINING_SPEED_OVERRIDES = {
    "DeepGenTrainLoRA": {"steps": 2, "resolution": 64, "rank": 2, "save_every": 0, "validation_steps": 2},
    "DeepGenTrainRL": {
        "steps": 2,
        "resolution": 64,
        "rank": 2,
        "group_size": 2,
        "prompts_per_step": 1,
        "save_every": 0,
        "eval_every": 0,
        "sampling_steps": 2,
    },
}


class WorkflowError(AssertionError):
    pass


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    kind = spec[0]
    if _options(spec).get("forceInput"):
        return False
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def all_inputs(cls) -> list[tuple[str, tuple, bool]]:
    """(name, spec, required) in schema order: required, then optional."""
    types = cls.INPUT_TYPES()
    out = [(n, s, True) for n, s in types.get("required", {}).items()]
    return out + [(n, s, False) for n, s in types.get("optional", {}).items()]


def socket_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def has_control_widget(name: str, spec) -> bool:
    """Whether the front end adds a hidden 'control after generate' widget after this input (and saves its value):
    an explicit control_after_generate option, else any INT input named seed or noise_seed (frontend 1.32
    useIntWidget's rule; found live: a `seed` without `control_after_generate: False` shifts later values)."""
    option = _options(spec).get("control_after_generate")
    if option is not None:
        return bool(option)
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def map_widgets(cls, values, extra_allowed=()) -> dict:
    """widgets_values (positional) -> {input name: value}, consuming control_after_generate values."""
    if isinstance(values, dict):
        return dict(values)
    values = list(values or [])
    out, i = {}, 0
    for name, spec, _ in all_inputs(cls):
        if not is_widget(spec):
            continue
        if i >= len(values):
            raise WorkflowError(f"{cls.__name__}: widgets_values has no value for '{name}'")
        out[name] = values[i]
        i += 1
        if has_control_widget(name, spec):
            if i >= len(values) or values[i] not in CONTROL_VALUES:
                raise WorkflowError(
                    f"{cls.__name__}: '{name}' needs a control_after_generate value "
                    f"({'/'.join(sorted(CONTROL_VALUES))}) after it, got {values[i : i + 1]}"
                )
            i += 1
    rest = values[i:]
    if list(rest) != list(extra_allowed)[: len(rest)]:
        raise WorkflowError(f"{cls.__name__}: unexpected extra widgets_values {rest}")
    return out


def check_value(cls, name, spec, value) -> None:
    kind, opts = spec[0], _options(spec)
    where = f"{cls.__name__}.{name}"
    if isinstance(kind, (list, tuple)):
        if value not in kind:
            raise WorkflowError(f"{where}: {value!r} is not one of {list(kind)[:12]}")
        return
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            raise WorkflowError(f"{where}: {value!r} is not an INT")
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise WorkflowError(f"{where}: {value!r} is not a FLOAT")
    elif kind == "STRING":
        if not isinstance(value, str):
            raise WorkflowError(f"{where}: {value!r} is not a STRING")
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise WorkflowError(f"{where}: {value!r} is not a BOOLEAN")
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            raise WorkflowError(f"{where}: {value} < min {opts['min']}")
        if "max" in opts and value > opts["max"]:
            raise WorkflowError(f"{where}: {value} > max {opts['max']}")


def run_validate_inputs(cls, constants: dict):
    """ComfyUI's VALIDATE_INPUTS call: only the arguments it names (all of them with **kwargs)."""
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return True
    spec = inspect.getfullargspec(fn)
    args = {k: v for k, v in constants.items() if k in spec.args or spec.varkw is not None}
    return fn(**args)


def check_workflow(workflow: dict, classes: dict, extra_widget_values: dict) -> None:
    if workflow.get("version") != 0.4:
        raise WorkflowError(f"version must be 0.4, got {workflow.get('version')!r}")
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        if key not in workflow:
            raise WorkflowError(f"missing top-level key {key!r}")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        raise WorkflowError("duplicate node ids")
    if max(nodes) > workflow["last_node_id"]:
        raise WorkflowError("last_node_id is smaller than a node id")
    links = {}
    for link in workflow["links"]:
        if len(link) != 6:
            raise WorkflowError(f"link {link} is not [id, origin, origin_slot, target, target_slot, type]")
        links[link[0]] = link
    if links and max(links) > workflow["last_link_id"]:
        raise WorkflowError("last_link_id is smaller than a link id")

    for node in workflow["nodes"]:
        for key in (
            "id",
            "type",
            "pos",
            "size",
            "flags",
            "order",
            "mode",
            "inputs",
            "outputs",
            "properties",
            "widgets_values",
        ):
            if key not in node:
                raise WorkflowError(f"node {node.get('id')} has no {key!r}")
        kind = node["type"]
        if kind not in classes:
            raise WorkflowError(f"node {node['id']}: unknown node type {kind!r}")
        cls = classes[kind]
        specs = {name: (spec, required) for name, spec, required in all_inputs(cls)}
        widgets = map_widgets(cls, node["widgets_values"], extra_widget_values.get(kind, ()))
        connected = set()
        for slot, inp in enumerate(node["inputs"]):
            if inp["name"] not in specs:
                raise WorkflowError(f"node {node['id']} ({kind}): no input named {inp['name']!r}")
            spec, _ = specs[inp["name"]]
            if inp["type"] != socket_type(spec):
                raise WorkflowError(
                    f"node {node['id']} ({kind}).{inp['name']}: type {inp['type']} != {socket_type(spec)}"
                )
            if inp.get("link") is not None:
                link = links.get(inp["link"])
                if link is None or link[3] != node["id"] or link[4] != slot:
                    raise WorkflowError(
                        f"node {node['id']} ({kind}).{inp['name']}: link {inp['link']} does not end here"
                    )
                connected.add(inp["name"])
        for name, (spec, required) in specs.items():
            if is_widget(spec):
                if name not in connected:
                    check_value(cls, name, spec, widgets[name])
            elif required and name not in connected:
                raise WorkflowError(f"node {node['id']} ({kind}): required input {name!r} is not connected")
        result = run_validate_inputs(cls, {k: v for k, v in widgets.items() if k not in connected})
        if result is not True:
            raise WorkflowError(f"node {node['id']} ({kind}): VALIDATE_INPUTS says: {result}")
        if len(node["outputs"]) != len(cls.RETURN_TYPES):
            raise WorkflowError(
                f"node {node['id']} ({kind}): {len(node['outputs'])} outputs, class has {len(cls.RETURN_TYPES)}"
            )
        for slot, out in enumerate(node["outputs"]):
            if out["type"] != cls.RETURN_TYPES[slot]:
                raise WorkflowError(
                    f"node {node['id']} ({kind}) output {slot}: {out['type']} != {cls.RETURN_TYPES[slot]}"
                )
            for link_id in out.get("links") or []:
                link = links.get(link_id)
                if link is None or link[1] != node["id"] or link[2] != slot:
                    raise WorkflowError(f"node {node['id']} ({kind}) output {slot}: link {link_id} does not start here")

    for link_id, origin, origin_slot, target, target_slot, kind in links.values():
        if origin not in nodes or target not in nodes:
            raise WorkflowError(f"link {link_id} joins a missing node")
        src_cls = classes[nodes[origin]["type"]]
        out_type = src_cls.RETURN_TYPES[origin_slot]
        inp = nodes[target]["inputs"][target_slot]
        in_type = socket_type({n: s for n, s, _ in all_inputs(classes[nodes[target]["type"]])}[inp["name"]])
        if not (out_type == kind == in_type):
            raise WorkflowError(f"link {link_id}: {out_type} -> {in_type} (link says {kind})")
        if inp.get("link") != link_id or link_id not in (nodes[origin]["outputs"][origin_slot].get("links") or []):
            raise WorkflowError(f"link {link_id} is not recorded on both of its nodes")


def ui_to_api(workflow: dict, classes: dict, extra_widget_values: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in UI_ONLY:
            continue
        cls = classes[node["type"]]
        linked = {}
        for inp in node["inputs"]:
            if inp.get("link") is not None:
                link = links[inp["link"]]
                linked[inp["name"]] = [str(link[1]), link[2]]
        inputs = {}
        widgets = map_widgets(cls, node["widgets_values"], extra_widget_values.get(node["type"], ()))
        for name, spec, _ in all_inputs(cls):
            if name in linked:
                inputs[name] = linked[name]
            elif name in widgets:
                value = widgets[name]
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title") or node["type"]},
        }
    return prompt


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _needs_comfyui(prompt: dict, classes: dict) -> set:
    """Ids of nodes that need a real ComfyUI to run: spec-only core nodes and every node downstream of one."""
    blocked: set = set()
    changed = True
    while changed:
        changed = False
        for nid, node in prompt.items():
            if nid in blocked:
                continue
            if getattr(classes[node["class_type"]], "NEEDS_COMFYUI", None) or any(
                _is_link(v) and v[0] in blocked for v in node["inputs"].values()
            ):
                blocked.add(nid)
                changed = True
    return blocked


def not_run(prompt: dict, classes: dict) -> dict:
    """{node id: class_type} of the nodes `execute` leaves out because they need a real ComfyUI."""
    return {nid: prompt[nid]["class_type"] for nid in sorted(_needs_comfyui(prompt, classes))}


def execute(prompt: dict, classes: dict, extra_pnginfo: dict | None = None, overrides: dict | None = None):
    """Run an API prompt. Returns ({node id: tuple of output lists}, {node id: merged ui dict}, run order).

    Nodes that need a real ComfyUI (NEEDS_COMFYUI, and what depends on them) are left out: see `not_run`."""
    overrides = overrides or {}
    for node in prompt.values():  # speed-only overrides of constants, e.g. {"DeepGenSampler": {"steps": 2}}
        for name, value in overrides.get(node["class_type"], {}).items():
            if name in node["inputs"] and not _is_link(node["inputs"][name]):
                node["inputs"][name] = value
    outputs_nodes = [nid for nid, n in prompt.items() if getattr(classes[n["class_type"]], "OUTPUT_NODE", False)]
    if not outputs_nodes:
        raise WorkflowError("prompt has no output node")
    # Spec-only core nodes (NEEDS_COMFYUI) and what depends on them are not run; the rest of the graph is, up to
    # the inputs of the first node that needs ComfyUI.
    blocked = _needs_comfyui(prompt, classes)
    roots = [nid for nid in outputs_nodes if nid not in blocked]
    roots += [
        value[0]
        for nid in sorted(blocked)
        for value in prompt[nid]["inputs"].values()
        if _is_link(value) and value[0] not in blocked
    ]
    order, seen = [], set()

    def visit(nid, stack=()):
        if nid in stack:
            raise WorkflowError(f"cycle through node {nid}")
        if nid in seen:
            return
        for value in prompt[nid]["inputs"].values():
            if _is_link(value):
                visit(value[0], stack + (nid,))
        seen.add(nid)
        order.append(nid)

    for nid in roots:
        visit(nid)

    # validation before anything runs, as ComfyUI's validate_prompt does
    for nid in order:
        cls = classes[prompt[nid]["class_type"]]
        constants = {
            k: (v["__value__"] if isinstance(v, dict) and "__value__" in v else v)
            for k, v in prompt[nid]["inputs"].items()
            if not _is_link(v)
        }
        result = run_validate_inputs(cls, constants)
        if result is not True:
            raise WorkflowError(f"node {nid} ({cls.__name__}) failed validation: {result}")
        if hasattr(cls, "IS_CHANGED"):
            cls.IS_CHANGED(**constants)

    import torch

    with torch.inference_mode():  # ComfyUI's PromptExecutor runs every prompt in inference mode
        return _run(prompt, classes, order, extra_pnginfo)


def _run(prompt, classes, order, extra_pnginfo):
    results, ui = {}, defaultdict(dict)
    for nid in order:
        node = prompt[nid]
        cls = classes[node["class_type"]]
        args = {}
        for name, value in node["inputs"].items():
            if _is_link(value):
                src, slot = value
                args[name] = results[src][slot]
            else:
                args[name] = [value["__value__"] if isinstance(value, dict) and "__value__" in value else value]
        hidden = cls.INPUT_TYPES().get("hidden", {})
        for name, what in hidden.items():
            args[name] = [{"UNIQUE_ID": nid, "PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo}.get(what)]
        obj = cls()
        fn = getattr(obj, cls.FUNCTION)
        if getattr(cls, "INPUT_IS_LIST", False):
            calls = [{k: v for k, v in args.items()}]
        else:
            n = max((len(v) for v in args.values()), default=1)
            if any(len(v) == 0 for v in args.values()):
                n = 0
            calls = [{k: v[min(i, len(v) - 1)] for k, v in args.items()} for i in range(n)]
        is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * len(cls.RETURN_TYPES))
        outs = tuple([] for _ in cls.RETURN_TYPES)
        for call in calls:
            r = fn(**call)
            if isinstance(r, dict):
                for key, value in (r.get("ui") or {}).items():
                    ui[nid].setdefault(key, []).extend(value)
                r = r.get("result", ())
            if len(r) != len(cls.RETURN_TYPES):
                raise WorkflowError(
                    f"node {nid} ({cls.__name__}) returned {len(r)} values for {len(cls.RETURN_TYPES)} outputs"
                )
            for j, value in enumerate(r):
                outs[j].extend(value) if is_list[j] else outs[j].append(value)
        results[nid] = outs
    return results, dict(ui), order
