"""The headless runner: order, caching, validation errors, execution errors, events, interrupt, list semantics,
hidden inputs and overrides with small dummy nodes; then end to end with our nodes on the tiny models, and the
`ipx2p run` command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from dummy_nodes import CALLS, NODES, Show, Slow, Stamped
from PIL import Image

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.host import StandaloneHost
from ipx2p_standalone.cli import main
from ipx2p_standalone.runner import Runner, WorkflowError
from ipx2p_standalone.workflow import input_types, widget_default, widget_layout


def chain(value=3.0, factor=2.0):
    """1, 2 → 3 (Add) → 4 (Scale) → 5 (Show); 9 is needed by no output."""
    return {
        "1": {"class_type": "Number", "inputs": {"value": value}},
        "2": {"class_type": "Number", "inputs": {"value": 4.0}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "Scale", "inputs": {"x": ["3", 0], "factor": factor}},
        "5": {"class_type": "Show", "inputs": {"value": ["4", 0], "label": "out"}},
        "9": {"class_type": "Number", "inputs": {"value": 99.0}},
    }


# ---------------------------------------------------------------------------------------------- order and caching


def test_topological_order_and_only_needed_nodes(runner):
    result = runner.run(chain())
    assert result.ok, result.error_text()
    ex = result.executed
    assert sorted(ex) == ["1", "2", "3", "4", "5"] and "9" not in ex
    assert ex.index("1") < ex.index("3") and ex.index("2") < ex.index("3") < ex.index("4") < ex.index("5")
    assert result.outputs == {"5": {"text": ["out=14.0"]}}
    assert result.output("4") == 14.0 and result.cached == []
    assert ("Number", "99.0") not in CALLS


def test_cache_reruns_only_what_changed(runner):
    runner.run(chain())
    again = runner.run(chain())
    assert again.executed == [] and again.cached == ["1", "2", "3", "4", "5"]
    assert again.outputs == {"5": {"text": ["out=14.0"]}}  # cached UI output is still reported
    changed = runner.run(chain(factor=3.0))  # only Scale and what follows it
    assert changed.executed == ["4", "5"] and changed.cached == ["1", "2", "3"]
    assert changed.outputs["5"] == {"text": ["out=21.0"]}
    upstream = runner.run(chain(value=1.0, factor=3.0))
    assert upstream.executed == ["1", "3", "4", "5"] and upstream.cached == ["2"]
    # a link re-wired to another node with identical inputs is still cached (the key is the inputs, not the id)
    p = chain(value=1.0, factor=3.0)
    p["7"] = {"class_type": "Number", "inputs": {"value": 4.0}}
    p["3"]["inputs"]["b"] = ["7", 0]
    assert runner.run(p).executed == []


def test_cache_keeps_only_the_current_prompt_unless_asked(runner, tmp_path):
    runner.run(chain())
    runner.run(chain(value=50.0))
    assert runner.run(chain()).executed == ["1", "3", "4", "5"]  # classic cache: the first run's entries were dropped
    keeping = Runner(NODES, output_dir=tmp_path / "o2", input_dir=tmp_path / "in", host=runner.host,
                     cache_size=16)  # the host's temp folder (the first runner's) is this runner's too
    keeping.run(chain())
    keeping.run(chain(value=50.0))
    assert keeping.run(chain()).executed == []
    keeping.clear_cache()
    assert len(keeping.run(chain()).executed) == 5


def test_is_changed_and_node_objects(runner):
    prompt = {"1": {"class_type": "Volatile", "inputs": {"value": 1.0}},
              "2": {"class_type": "Stamped", "inputs": {"value": 2.0}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": "s"}}}
    Stamped.stamp = "a"
    runner.run(prompt)
    # NaN from IS_CHANGED: always runs (and so does everything after it)
    assert runner.run(prompt).executed == ["1", "3", "4"]
    Stamped.stamp = "b"  # IS_CHANGED value changed (a file changed on disk)
    assert runner.run(prompt).executed == ["1", "2", "3", "4"]
    # one object per node id, kept across runs
    counter = {"1": {"class_type": "Counter", "inputs": {"value": 0.0}},
               "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": "n"}}}
    runner.run(counter)
    assert runner.run(counter).outputs["2"] == {"text": ["n=2.0"]}


def test_list_outputs_and_list_inputs(runner):
    prompt = {"1": {"class_type": "Spread", "inputs": {"count": 3}},
              "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2.0}},
              "3": {"class_type": "Total", "inputs": {"values": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": "each"}},
              "5": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": "sum"}}}
    result = runner.run(prompt)
    assert result.ok
    assert CALLS.count(("Scale", "")) == 3 and CALLS.count(("Total", "")) == 1
    assert result.output("2", index=None) == [0.0, 2.0, 4.0]
    assert result.outputs["4"] == {"text": ["each=0.0", "each=2.0", "each=4.0"]}  # UI lists are concatenated
    assert result.outputs["5"] == {"text": ["sum=6.0"]}


def test_hidden_inputs(runner):
    result = runner.run(chain(), extra_pnginfo={"workflow": {"nodes": []}})
    unique_id, prompt, extra = Show.last_hidden
    assert unique_id == "5" and prompt == result.prompt and extra == {"workflow": {"nodes": []}}


def test_outputs_argument_runs_a_subgraph(runner):
    result = runner.run(chain(), outputs=["3"])
    assert result.ok and result.executed == ["1", "2", "3"] and result.output("3") == 7.0


# ---------------------------------------------------------------------------------------------- validation


def _errors(result, node_id):
    assert result.status == "invalid", result
    return result.node_errors[node_id]["errors"]


@pytest.mark.parametrize(
    "edit,node_id,kind,input_name,text",
    [
        (lambda p: p["3"].update(class_type="NoSuchNode"), "3", "invalid_prompt", None,
         "node NoSuchNode does not exist"),
        (lambda p: p["4"]["inputs"].pop("x"), "4", "required_input_missing", "x", "Required input is missing"),
        (lambda p: p["4"]["inputs"].update(x=["42", 0]), "4", "linked_node_missing", "x", "not in the workflow"),
        (lambda p: p["4"]["inputs"].update(x=["3", 2]), "4", "bad_linked_input", "x", "has 1 output(s)"),
        (lambda p: p["4"]["inputs"].update(x="oops"), "4", "bad_linked_input", None, None),
        (lambda p: p.update({"8": {"class_type": "MakeImage", "inputs": {"text": "", "seed": 0, "width": 4,
                                                                         "color": "red"}}})
         or p["5"]["inputs"].update(value=["8", 0]), "5", "return_type_mismatch", "value",
         "received_type(IMAGE) mismatch input_type(NUMBER)"),
        (lambda p: p["4"]["inputs"].update(factor=-1), "4", "value_smaller_than_min", "factor",
         "Value -1.0 smaller than min of 0.0"),
        (lambda p: p["4"]["inputs"].update(factor=11), "4", "value_bigger_than_max", "factor",
         "Value 11.0 bigger than max of 10.0"),
        (lambda p: p["4"]["inputs"].update(factor="abc"), "4", "invalid_input_type", "factor",
         "Failed to convert an input value to a FLOAT value"),
        (lambda p: p["4"]["inputs"].update(offset=2.5), "4", "invalid_input_type", "offset", "INT"),
        (lambda p: p["3"]["inputs"].update(a=["4", 0]), "3", "dependency_cycle", "a", "cycle"),
    ],
)
def test_validation_errors(runner, edit, node_id, kind, input_name, text):
    prompt = chain()
    edit(prompt)
    result = runner.run(prompt)
    (err,) = [e for e in _errors(result, node_id) if e["type"] == kind] or [None]
    assert err is not None, result.node_errors
    assert result.node_errors[node_id]["class_type"] == prompt[node_id]["class_type"]
    if input_name:
        assert err["extra_info"]["input_name"] == input_name
    if text:
        assert text in f"{err['message']} {err['details']}"
    assert CALLS == [] and result.executed == []  # nothing ran
    with pytest.raises(WorkflowError) as info:
        result.raise_for_error()
    assert f"node {node_id} (" in str(info.value)


def test_validation_combo_and_custom_check(runner):
    prompt = {"1": {"class_type": "MakeImage", "inputs": {"text": "", "seed": 0, "width": 4, "color": "purple"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
              "3": {"class_type": "Checked", "inputs": {"name": "bad.bin"}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": ""}}}
    result = runner.run(prompt)
    (combo,) = _errors(result, "1")
    assert combo["type"] == "value_not_in_list" and combo["details"] == "color: 'purple' not in ['red', 'green', 'blue']"
    (custom,) = _errors(result, "3")
    assert custom["type"] == "custom_validation_failed" and custom["details"] == "name - Model 'bad.bin' not found"
    assert result.node_errors["3"]["dependent_outputs"] == ["4"]
    assert result.error["type"] == "prompt_outputs_failed_validation"
    # a value VALIDATE_INPUTS accepts is not also checked against the combo list (as ComfyUI)
    prompt["3"]["inputs"]["name"] = "other.bin"
    assert "3" not in runner.run(prompt).node_errors


def test_validation_image_files(runner, tmp_path):
    (tmp_path / "in" / "notes.png").write_text("this is not a picture")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "notes.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    (err,) = _errors(runner.run(prompt), "1")
    assert err["type"] == "custom_validation_failed" and "notes.png is not a readable image" in err["details"]
    prompt["1"]["inputs"]["image"] = "missing.png"
    (err,) = _errors(runner.run(prompt), "1")
    assert err["details"] == f"image - Invalid image file: missing.png does not exist (looked for " \
        f"{(tmp_path / 'in' / 'missing.png').resolve()})"


def test_partial_runs_like_comfyui(runner):
    prompt = chain()
    prompt["6"] = {"class_type": "Show", "inputs": {"label": "broken"}}
    assert runner.run(prompt).status == "invalid"
    result = runner.run(prompt, allow_partial=True)
    assert result.ok and "6" in result.node_errors and result.executed[-1] == "5"
    v = runner.validate(prompt)
    assert not v.ok and v.outputs == ["5"] and "node 6 (Show" in v.text()


@pytest.mark.parametrize("bad", [[], "x", None, 5, {}, {"1": 5}, {"1": {"inputs": {}}}, {"nodes": "x"},
                                 {"1": {"class_type": "Show", "inputs": "zzz"}},
                                 {"1": {"class_type": "Number", "inputs": {"value": 1.0}}},
                                 {"nodes": [{"id": 1, "type": "Show", "inputs": [{"name": "value", "link": 5}]}],
                                  "links": [[5, 7, 0, 1, 0, "NUMBER"]]},
                                 {"nodes": [{"type": "Show"}], "links": []}])
def test_bad_input_never_crashes(runner, bad):
    result = runner.run(bad)
    assert result.status == "invalid" and result.error and result.error["message"]
    assert CALLS == []


# ---------------------------------------------------------------------------------------------- execution


def test_node_exception_is_a_per_node_execution_error(runner):
    prompt = chain()
    prompt["4"] = {"class_type": "Fail", "inputs": {"x": ["3", 0]}}
    events = []
    result = runner.run(prompt, on_event=lambda e, d: events.append((e, d)))
    assert result.status == "error"
    err = result.error
    assert (err["node_id"], err["node_type"], err["exception_type"]) == ("4", "Fail", "ValueError")
    assert err["exception_message"].startswith("cannot handle 7.0")
    assert any("raise ValueError" in line for line in err["traceback"])
    assert err["current_inputs"] == {"x": [7.0]} and sorted(err["executed"]) == ["1", "2", "3"]
    assert events[-1] == ("execution_error", err)
    assert result.messages[-1][0] == "execution_error"
    # what ran is cached; the runner is still usable
    fixed = runner.run(chain())
    assert fixed.ok and fixed.executed == ["4", "5"]


def test_events_follow_comfyui_protocol(runner):
    events = []
    result = runner.run(chain(), prompt_id="p1", on_event=lambda e, d: events.append((e, d)))
    names = [e for e, _ in events]
    assert names[:2] == ["execution_start", "execution_cached"] and names[-1] == "execution_success"
    assert events[0][1]["prompt_id"] == "p1" and isinstance(events[0][1]["timestamp"], int)
    assert events[1][1]["nodes"] == []
    per_node = [e for e in names[2:-1] if e != "progress_state"]
    assert per_node == ["executing"] * 4 + ["executing", "executed"]
    assert [d["node"] for e, d in events if e == "executing"] == result.executed
    executed = next(d for e, d in events if e == "executed")
    assert executed == {"node": "5", "display_node": "5", "output": {"text": ["out=14.0"]}, "prompt_id": "p1"}
    states = [d for e, d in events if e == "progress_state"]
    assert states[-1]["nodes"]["5"]["state"] == "finished" and states[-1]["prompt_id"] == "p1"
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]

    events.clear()
    runner.run(chain(), prompt_id="p2", on_event=lambda e, d: events.append((e, d)))
    assert [e for e, _ in events] == ["execution_start", "execution_cached", "executed", "execution_success"]
    assert events[1][1]["nodes"] == ["1", "2", "3", "4", "5"]


def test_progress_and_interrupt(runner):
    prompt = chain()
    prompt["4"] = {"class_type": "Slow", "inputs": {"x": ["3", 0], "steps": 4}}
    events = []
    result = runner.run(prompt, on_event=lambda e, d: events.append((e, d)))
    assert result.ok
    progress = [d for e, d in events if e == "progress"]
    assert [(d["value"], d["max"], d["node"]) for d in progress] == [(1, 4, "4"), (2, 4, "4"), (3, 4, "4"),
                                                                     (4, 4, "4")]

    runner.clear_cache()
    events.clear()
    Slow.on_step = lambda step: runner.interrupt() if step == 2 else None
    result = runner.run(prompt, on_event=lambda e, d: events.append((e, d)))
    assert result.status == "interrupted"
    assert events[-1][0] == "execution_interrupted"
    assert events[-1][1]["node_id"] == "4" and events[-1][1]["node_type"] == "Slow"
    assert "4" not in result.executed and "5" not in result.executed
    assert len([e for e, _ in events if e == "progress"]) == 2

    Slow.on_step = None
    again = runner.run(prompt)  # the interrupt flag was cleared; what ran before the interrupt is cached
    assert again.ok and again.executed == ["4", "5"]


def test_validate_while_a_run_is_in_progress(runner):
    import threading

    started, release = threading.Event(), threading.Event()

    def hold(step):
        started.set()
        release.wait(10)

    Slow.on_step = hold
    prompt = chain()
    prompt["4"] = {"class_type": "Slow", "inputs": {"x": ["3", 0], "steps": 1}}
    worker = threading.Thread(target=lambda: runner.run(prompt))
    worker.start()
    try:
        assert started.wait(10)
        assert runner.validate(chain()).ok  # answered while the run holds the runner
    finally:
        release.set()
        worker.join(10)


def test_interrupt_between_nodes(runner):
    def listener(event, data):
        if event == "executed" or (event == "executing" and data["node"] == "3"):
            runner.interrupt()

    result = runner.run(chain(), on_event=listener)
    assert result.status == "interrupted" and result.error["node_id"] == "3"
    assert result.executed == ["1", "2"]


def test_a_failing_listener_does_not_break_the_run(runner):
    def listener(event, data):
        raise RuntimeError("bad listener")

    assert runner.run(chain(), on_event=listener).ok


def test_overrides(runner):
    result = runner.run(chain(), overrides={"4.factor": "3", "5.label": "x", "1.value": 5, "4.offset": "-2"})
    assert result.ok and result.outputs["5"] == {"text": ["x=25.0"]}
    assert result.prompt["4"]["inputs"]["factor"] == 3.0 and result.prompt["4"]["inputs"]["offset"] == -2
    relinked = runner.run(chain(), overrides={"4.x": '["2", 0]'})
    assert relinked.outputs["5"] == {"text": ["out=8.0"]}
    nested = runner.run(chain(), overrides={"4": {"factor": 1.0}})
    assert nested.outputs["5"] == {"text": ["out=7.0"]}
    for overrides, text in [({"77.value": 1}, "there is no node 77"),
                            ({"4.nope": 1}, "Scale has no input 'nope' (inputs: x, factor, offset)"),
                            ({"4.factor": "big"}, "not a valid FLOAT"),
                            ({"4.offset": "1.5"}, "not a valid INT")]:
        bad = runner.run(chain(), overrides=overrides)
        assert bad.status == "invalid" and text in bad.error["message"], bad.error


def test_object_info_layout(runner):
    info = runner.object_info()
    scale = info["Scale"]
    assert scale["input_order"] == {"required": ["x", "factor"], "optional": ["offset"]}
    assert scale["output"] == ["NUMBER"] and scale["output_name"] == ["NUMBER"] and scale["output_node"] is False
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["display_name"] == "Save Image"
    assert info["Add"]["output_name"] == ["sum"]


# ---------------------------------------------------------------------------------------------- our nodes, end to end


@pytest.fixture()
def models(tmp_path, tiny_sd):
    root = tmp_path / "models"
    (root / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], root / "diffusers" / "tiny-sd")
    return root


@pytest.fixture()
def ipx2p_runner(tmp_path, models, photo):
    previous = get_host()
    (tmp_path / "in").mkdir(exist_ok=True)
    photo.save(tmp_path / "in" / "photo.png")
    r = Runner(output_dir=tmp_path / "out", input_dir=tmp_path / "in", temp_dir=tmp_path / "temp",
               host=StandaloneHost(models_dir=models, device="cpu"))
    yield r
    set_host(previous)


def ui_node(runner, id, type, values, links_in=(), n_outputs=0):
    """A UI node whose widgets_values follow the class's widget layout (control 'fixed', upload 'image')."""
    cls = runner.node_classes[type]
    widgets = []
    for slot in widget_layout(cls):
        if slot.extra == "control":
            widgets.append("fixed")
        elif slot.extra == "filter":
            widgets.append("")
        elif slot.extra == "upload":
            widgets.append("image")
        elif slot.name in values:
            widgets.append(values[slot.name])
        else:  # inputs the test does not care about keep their defaults (e.g. optional mask settings)
            spec = input_types(cls)
            widgets.append(widget_default({**spec["required"], **spec["optional"]}[slot.name]))
    inputs = [{"name": name, "type": typ, "link": link} for name, typ, link in links_in]
    outputs = [{"name": t, "type": t, "links": [], "slot_index": i} for i, t in enumerate(cls.RETURN_TYPES)]
    return {"id": id, "type": type, "pos": [0, 0], "size": [300, 200], "flags": {}, "order": id, "mode": 0,
            "inputs": inputs, "outputs": outputs, "properties": {}, "widgets_values": widgets}


def staged_and_one_node_workflow(runner):
    """LoadImage + Load Model → staged (encode ×2, sample, decode → Save "staged") and Edit Image → Save "one"."""
    sampler = dict(seed=7, steps=2, scheduler="auto", text_guidance=7.5, image_guidance=1.5, guidance_rescale=0.0,
                   images_per_instruction=1)
    resize = dict(resize="fit", size=64, width=512, height=512)
    M, I, C, L, LAT, IMG = "IPX2P_MODEL", "IMAGE", "IPX2P_CONDITIONING", "IPX2P_IMAGE_LATENTS", "LATENT", "IMAGE"
    links = [(1, 2, 0, 3, 0, M), (2, 2, 0, 4, 0, M), (3, 1, 0, 4, 1, I), (4, 2, 0, 5, 0, M), (5, 3, 0, 5, 1, C),
             (6, 4, 0, 5, 2, L), (7, 2, 0, 6, 0, M), (8, 5, 0, 6, 1, LAT), (9, 6, 0, 7, 0, IMG),
             (10, 2, 0, 8, 0, M), (11, 1, 0, 8, 1, I), (12, 8, 0, 9, 0, IMG)]
    nodes = [
        ui_node(runner, 1, "LoadImage", {"image": "photo.png"}),
        ui_node(runner, 2, "IPX2PLoadModel", {"model_name": "[diffusers] tiny-sd", "family": "auto",
                                              "dtype": "fp32", "device": "cpu"}),
        ui_node(runner, 3, "IPX2PEncodeInstruction", {"instruction": "make it winter", "negative": "blurry",
                                                      "instruction_2": ""}, [("model", M, 1)]),
        ui_node(runner, 4, "IPX2PEncodeImage", resize, [("model", M, 2), ("image", I, 3)]),
        ui_node(runner, 5, "IPX2PSampler", sampler, [("model", M, 4), ("conditioning", C, 5),
                                                     ("image_latents", L, 6)]),
        ui_node(runner, 6, "IPX2PDecode", {"restore_size": True}, [("model", M, 7), ("latent", LAT, 8)]),
        ui_node(runner, 7, "SaveImage", {"filename_prefix": "staged"}, [("images", IMG, 9)]),
        ui_node(runner, 8, "IPX2PEditImage", {"instruction": "make it winter", "negative": "blurry", **sampler,
                                              **resize, "restore_size": True}, [("model", M, 10), ("image", I, 11)]),
        ui_node(runner, 9, "SaveImage", {"filename_prefix": "one"}, [("images", IMG, 12)]),
    ]
    return {"last_node_id": 9, "last_link_id": 12, "nodes": nodes, "links": [list(l) for l in links], "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def test_ipx2p_nodes_end_to_end_staged_equals_one_node_and_caching(ipx2p_runner, tmp_path):
    runner = ipx2p_runner
    wf = staged_and_one_node_workflow(runner)
    result = runner.run(wf)
    assert result.ok, result.error_text()
    staged, one = result.output("6"), result.output("8")
    assert staged.shape == one.shape == (1, 32, 44, 3) and staged.dtype == torch.float32
    assert torch.equal(staged, one)
    assert [p.name for p in result.files] == ["staged_00001_.png", "one_00001_.png"]
    png = Image.open(result.files[0])
    assert png.size == (44, 32)
    assert json.loads(png.text["workflow"]) == wf and json.loads(png.text["prompt"]) == result.prompt
    assert result.prompt["5"]["inputs"]["seed"] == 7  # the control_after_generate value was skipped
    assert np.array_equal(np.asarray(png), np.asarray(Image.open(result.files[1])))

    # change only the staged sampler's text guidance: sampler, decode and its save run again, nothing else
    changed = runner.run(wf, overrides={"5.text_guidance": 5.0})
    assert changed.ok and changed.executed == ["5", "6", "7"]
    assert changed.cached == ["1", "2", "3", "4", "8", "9"]
    assert not torch.equal(changed.output("6"), staged)


def test_ipx2p_errors_and_interrupt(ipx2p_runner, tmp_path):
    runner = ipx2p_runner
    wf = staged_and_one_node_workflow(runner)
    (tmp_path / "in" / "fake.png").write_bytes(b"GIF89a not really")
    bad = runner.run(wf, overrides={"2.model_name": "nope.safetensors", "1.image": "fake.png"})
    assert bad.status == "invalid"
    (model_err,) = bad.node_errors["2"]["errors"]
    assert model_err["type"] == "custom_validation_failed" and "Model 'nope.safetensors' not found" in \
        model_err["details"]
    assert "fake.png is not a readable image" in bad.node_errors["1"]["errors"][0]["details"]
    wrong = runner.run(wf, overrides={"5.image_latents": '["3", 0]'})
    assert wrong.node_errors["5"]["errors"][0]["type"] == "return_type_mismatch"

    events = []

    def stop(event, data):
        events.append((event, data))
        if event == "progress" and data["node"] == "5" and data["value"] == 1:
            runner.interrupt()

    result = runner.run(wf, on_event=stop)
    assert result.status == "interrupted" and result.error["node_id"] == "5"
    assert "5" not in result.executed and events[-1][0] == "execution_interrupted"
    previews = [d for e, d in events if e == "preview"]
    assert previews and previews[0]["node"] == "5" and isinstance(previews[0]["image"], Image.Image)


def test_cli_run(ipx2p_runner, models, tmp_path, capsys):
    wf_path = tmp_path / "wf.json"
    wf_path.write_text(json.dumps(staged_and_one_node_workflow(ipx2p_runner)))
    out = tmp_path / "cli_out"
    args = ["run", str(wf_path), "--output-dir", str(out), "--input-dir", str(tmp_path / "in"), "--models",
            str(models), "--temp-dir", str(tmp_path / "cli_temp"), "--set", "5.seed=3", "--set", "8.seed=3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / "staged_00001_.png"), str(out / "one_00001_.png")]
    assert "running #5 Dual-Guidance Sampler (IP2P) [IPX2PSampler]" in captured.err
    assert "  #5:" in captured.err and "done #5 Dual-Guidance Sampler (IP2P) [IPX2PSampler] in " in captured.err
    meta = json.loads(Image.open(out / "staged_00001_.png").text["workflow"])
    assert meta["nodes"][4]["widgets_values"][:2] == [3, "fixed"]

    assert main(args[:-4] + ["--set", "5.steps=0", "--set", "2.model_name=missing.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "node 5 (IPX2PSampler, 'Dual-Guidance Sampler (IP2P)'): input 'steps': Value 0 smaller than min of 1" \
        in err
    assert "node 2 (IPX2PLoadModel" in err and "missing.safetensors" in err
    assert main(["run", str(tmp_path / "nope.json")]) == 2
    assert "Workflow file not found" in capsys.readouterr().err
    assert main(args[:2] + ["--set", "nonsense"]) == 2


def test_ipx2p_lora_and_embedding_chain(ipx2p_runner, models, tiny_sd):
    """Load → Apply LoRA → Apply Embedding → Edit through the runner, which (like ComfyUI's executor) calls every
    node inside torch.inference_mode(); changing a LoRA strength re-runs the LoRA node and what follows only."""
    from adapter_files import random_lora, random_vectors, to_peft, write, write_embedding

    from ipx2p_core import load_model

    base = load_model(tiny_sd["folder"], dtype="fp32", device="cpu")
    write(to_peft(random_lora(base, seed=3)), models / "loras" / "style.safetensors")
    width = base.text_encoders[0].config.hidden_size
    write_embedding(models / "embeddings" / "tok.safetensors", "a1111_safetensors",
                    vectors=random_vectors(width, 1, seed=5))
    edit = dict(negative="", seed=1, steps=2, scheduler="euler", text_guidance=7.5, image_guidance=1.5,
                resize="keep", size=512, width=512, height=512, restore_size=True, guidance_rescale=0.0,
                images_per_instruction=1)
    prompt = {
        "1": {"class_type": "IPX2PLoadModel", "inputs": {"model_name": "[diffusers] tiny-sd", "family": "auto",
                                                         "dtype": "fp32", "device": "cpu"}},
        "2": {"class_type": "IPX2PApplyLoRA", "inputs": {"model": ["1", 0], "lora_name": "style.safetensors",
                                                         "strength_model": 1.0, "strength_text": 1.0}},
        "3": {"class_type": "IPX2PApplyEmbedding", "inputs": {"model": ["2", 0], "embedding_name": "tok.safetensors",
                                                              "name": ""}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "4": {"class_type": "IPX2PEditImage", "inputs": {"model": ["3", 0], "image": ["10", 0],
                                                         "instruction": "make it embedding:tok", **edit}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "6": {"class_type": "IPX2PEditImage", "inputs": {"model": ["1", 0], "image": ["10", 0],
                                                         "instruction": "make it embedding:tok", **edit}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    result = ipx2p_runner.run(prompt)
    assert result.ok, result.error_text()
    adapted, plain = result.output("4"), result.output("6")
    assert adapted.shape == plain.shape == (1, 32, 44, 3) and not torch.equal(adapted, plain)
    changed = ipx2p_runner.run(prompt, overrides={"2.strength_model": 0.5})
    assert changed.ok and changed.executed == ["2", "3", "4", "5"] and "1" in changed.cached and "6" in changed.cached
