"""AnomalyGPT web chat: inspect a part photo, see where it deviates, ask follow-ups.

Run:  streamlit run chat_ui/app.py -- [--checkpoint PATH_OR_NAME]
(or `anomalygpt ui`). The checkpoint is, in order: --checkpoint, $ANOMALYGPT_CHECKPOINT,
"embedded". The model loads once per server process (st.cache_resource) and one lock
serialises inference, so several browser sessions can share it on a small CPU.

The page never shows a traceback: bad uploads, a missing checkpoint or a failed
inference become one `st.error` line and the session goes on (details go to the log).
"""
from __future__ import annotations

import html
import logging
import os
import threading

import streamlit as st

from anomalygpt.images import load_image, report_overlay
from anomalygpt.inspector import DEFAULT_QUESTION
from chat_ui.inputs import (MAX_BYTES, MAX_REFERENCES, InputError, bundled_samples, chat_history, checkpoint_name,
                            decode_references, decode_upload, png_bytes, region_rows, report_json)

log = logging.getLogger("anomalygpt.ui")

MAX_MB = MAX_BYTES // 2**20  # the browser refuses bigger files; the server checks again
AVATARS = {"user": ":material/engineering:", "assistant": ":material/troubleshoot:"}  # icon font ships with Streamlit
# every intent python -m anomalygpt.evaluation.chat_check passes (answers are checked against the report)
SUGGESTIONS = ("Where is the anomaly?", "How big is it?", "Is the left side OK?", "Which cells are clean?",
               "How sure are you?", "What could cause it?", "What should I do with it?", "Can it go to the customer?")
SUGGESTIONS_PER_ROW = 4
CORRECTED_NOTE = "Checked against the report: the model's first wording contradicted it and was replaced."
SOURCE_UPLOAD, SOURCE_SAMPLE = "Upload a photo", "Bundled sample"

CSS = """
<style>
.block-container {padding-top: 2.2rem; padding-bottom: 6rem;}
.verdict {border-radius: 0.6rem; padding: 0.8rem 1.2rem; margin: 0.2rem 0 0.6rem 0; color: white;
          display: flex; align-items: baseline; gap: 1.2rem; flex-wrap: wrap;}
.verdict .word {font-size: 1.9rem; font-weight: 700; letter-spacing: 0.04em;}
.verdict .detail {font-size: 1.0rem; opacity: 0.95;}
.verdict-anomalous {background: #c62828;}
.verdict-normal {background: #2e7d32;}
[data-testid="stAppDeployButton"] {display: none;}
</style>
"""


# ---------------------------------------------------------------- model
@st.cache_resource(show_spinner=False)
def load_assistant(checkpoint: str):
    """The assistant and the lock that serialises its use across sessions (once per server)."""
    from anomalygpt.inspector import AnomalyGPT

    return AnomalyGPT.from_pretrained(checkpoint), threading.Lock()


# ---------------------------------------------------------------- session
def init_state() -> None:
    defaults = {"report": None, "rgb": None, "overlay": None, "messages": [], "error": None, "error_inputs": None,
                "widget_gen": 0, "queued_question": None, "input_label": None}
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def start_over() -> None:
    """Forget the inspection and the chat, and empty the upload widgets."""
    for key in ("report", "rgb", "overlay", "error", "error_inputs", "queued_question", "input_label"):
        st.session_state[key] = None
    st.session_state.messages = []
    st.session_state.widget_gen += 1


def queue_question(question: str) -> None:
    st.session_state.queued_question = question


# ---------------------------------------------------------------- sidebar
# label -> zero_shot argument of AnomalyGPT.inspect ("" = the trained decoder, with references if given)
MODES = {"Trained detector": "", "Zero-shot (no training, no good parts)": "self"}


def image_inputs_key(inputs: dict) -> tuple:
    """What identifies the chosen images: an error about them is stale once this changes."""
    return (getattr(inputs["upload"], "file_id", None), str(inputs["sample"]) if inputs["sample"] else None,
            tuple(getattr(f, "file_id", f.name) for f in inputs["refs"]))


def sidebar(checkpoint: str) -> dict:
    """The inputs as the server has them now; "pressed" says whether Inspect was pressed in this run."""
    gen = st.session_state.widget_gen
    with st.sidebar:
        st.header("Inspect a part")
        samples = bundled_samples()
        source = st.radio("Image to inspect", [SOURCE_UPLOAD, SOURCE_SAMPLE], horizontal=True,
                          key=f"source_{gen}", help="Upload your own photo or try one of the bundled examples.")
        upload, sample = None, None
        if source == SOURCE_UPLOAD:
            upload = st.file_uploader("Photo of the part", key=f"image_{gen}", max_upload_size=MAX_MB,
                                      help="PNG, JPEG, TIFF or BMP; up to 20 MB and 40 megapixels.")
        elif samples:
            sample = st.selectbox("Sample", list(samples), key=f"sample_{gen}")
        else:
            st.info("No bundled samples found in anomalygpt/assets/.")
        refs = st.file_uploader(f"Good parts (optional, up to {MAX_REFERENCES})", accept_multiple_files=True,
                                key=f"refs_{gen}", max_upload_size=MAX_MB,
                                help="Photos of defect-free parts of the same kind, taken the same way. They sharpen "
                                     "the map and calibrate the verdict for this product.")
        object_name = st.text_input("Object name (optional)", key=f"object_{gen}", placeholder="e.g. solar cell",
                                    max_chars=60)
        mode = st.selectbox("Mode", list(MODES), key=f"mode_{gen}",
                            help="The trained detector works with or without good parts. The zero-shot mode "
                                 "needs neither training on this product nor good parts: each patch is compared "
                                 "with the rest of the same image.")
        chosen = upload.name if upload is not None else sample
        n_refs = len(refs or [])
        st.caption(f"Ready to inspect: {chosen}" + (f" with {n_refs} good part{'s' * (n_refs != 1)}" if n_refs else "")
                   if chosen else "Choose a photo to inspect.")
        pressed = st.button("Inspect", type="primary", width="stretch")
        st.button("Start over", on_click=start_over, width="stretch",
                  help="Clear the result, the chat and the uploads.")
        st.divider()
        st.caption(f"Model checkpoint: `{checkpoint}`")
    return {"upload": upload, "sample": samples.get(sample) if sample else None, "refs": refs or [],
            "object_name": (object_name or "").strip() or None, "zero_shot": MODES[mode], "pressed": pressed}


# ---------------------------------------------------------------- actions
def run_inspection(assistant, lock: threading.Lock, inputs: dict) -> None:
    """Check the inputs, inspect, and store the result; any failure becomes st.session_state.error."""
    st.session_state.error = None
    st.session_state.error_inputs = image_inputs_key(inputs)
    try:
        if inputs["upload"] is not None:
            name = inputs["upload"].name
            rgb = decode_upload(name, inputs["upload"].getvalue())
        elif inputs["sample"] is not None:
            name = inputs["sample"].name
            rgb = load_image(inputs["sample"])
        else:
            raise InputError("no image yet: upload a photo of the part in the sidebar, or choose a bundled sample")
        refs = decode_references([(f.name, f.getvalue()) for f in inputs["refs"]]) or None
        if refs and inputs["zero_shot"]:
            raise InputError("the zero-shot mode uses no good parts: remove them, or choose the trained detector")
    except InputError as err:
        st.session_state.error = str(err)
        return
    except Exception as err:  # noqa: BLE001 - the page shows one line, the log the details
        log.exception("reading the inputs failed")
        st.session_state.error = f"Could not read the inputs: {err}"
        return
    try:
        with st.spinner("Inspecting… (detector, then the assistant's first answer)"), lock:
            report = assistant.inspect(rgb, references=refs, object_name=inputs["object_name"], question=DEFAULT_QUESTION,
                                       zero_shot=inputs["zero_shot"])
        report.source = name
        over = report_overlay(rgb, report)
    except Exception as err:  # noqa: BLE001
        log.exception("inspection failed")
        st.session_state.error = (f"Inspection of {name} failed: {err}. Try another image, fewer references, "
                                  "or start over.")
        return
    st.session_state.update(report=report, rgb=rgb, overlay=over, input_label=name, messages=[
        {"role": "user", "content": DEFAULT_QUESTION},
        {"role": "assistant", "content": report.answer or "(the model gave no answer; see the measured result above)",
         "corrected": report.answer_corrected},
    ])


# ---------------------------------------------------------------- result
def show_result() -> None:
    report = st.session_state.report
    bad = report.is_anomalous
    n_regions = len(report.regions) if bad else 0
    if bad:
        where = ", ".join(dict.fromkeys(r.cell for r in report.regions)) or "spread out, no compact region"
        detail = f"{n_regions} region{'s' if n_regions != 1 else ''}: {where}" if n_regions else where
    else:
        detail = "no anomaly found"
    obj = f" · {html.escape(report.object_name)}" if report.object_name else ""
    label = html.escape(st.session_state.input_label or "image")
    st.markdown(f'<div class="verdict verdict-{report.verdict}"><span class="word">'
                f'{"⚠ ANOMALOUS" if bad else "✓ NORMAL"}</span><span class="detail">{label}{obj} · {html.escape(detail)}</span></div>', unsafe_allow_html=True)

    m = st.columns(4)
    m[0].metric("Anomaly score", f"{report.score:.3f}", delta=f"{report.score - report.threshold:+.3f} vs threshold",
                delta_color="inverse")
    m[1].metric("Threshold", f"{report.threshold:.3f}", help=f"Source: {report.threshold_source}")
    m[2].metric("Reference images", report.n_references)
    m[3].metric("Regions", n_regions)
    st.caption(f"Mode: {report.mode}. Threshold source: {report.threshold_source}. Score ≥ threshold means anomalous.")

    left, middle, right = st.columns([1, 1, 1.3], gap="medium")
    with left:
        st.markdown("**Image**")
        st.image(st.session_state.rgb, width="stretch")
    with middle:
        st.markdown("**Heat map** · 3x3 grid · regions outlined")
        st.image(st.session_state.overlay, width="stretch")
        st.caption("Blue = normal, red = at or above the threshold; white outlines = measured regions.")
    with right:
        st.markdown("**Regions**")
        rows = region_rows(report)
        if rows:
            st.dataframe(rows, hide_index=True, width="stretch")
        elif bad:
            st.write("The deviation is spread out; no compact region stands out.")
        else:
            st.write("None: every cell of the 3x3 grid looks normal.")
        if bad and rows:
            clean = report.clean_cells
            st.caption(f"Clean cells: {', '.join(clean) if clean else 'none'}")
        stem = os.path.splitext(st.session_state.input_label or "image")[0]
        d1, d2 = st.columns(2)
        d1.download_button("Report (JSON)", report_json(report, st.session_state.messages),
                           file_name=f"{stem}_report.json", mime="application/json", width="stretch")
        d2.download_button("Overlay (PNG)", png_bytes(st.session_state.overlay), file_name=f"{stem}_overlay.png",
                           mime="image/png", width="stretch")


def show_chat(assistant, lock: threading.Lock) -> None:
    st.subheader("Ask about this part")
    for msg in st.session_state.messages:
        with st.chat_message(msg["role"], avatar=AVATARS[msg["role"]]):
            st.markdown(msg["content"])
            if msg.get("corrected"):
                st.caption(CORRECTED_NOTE)
    typed = st.chat_input("Ask a follow-up, e.g. 'is the top right OK?'")
    question = (typed or "").strip() or st.session_state.queued_question
    st.session_state.queued_question = None
    if question:
        answer_question(assistant, lock, question)
    for start in range(0, len(SUGGESTIONS), SUGGESTIONS_PER_ROW):
        row = SUGGESTIONS[start:start + SUGGESTIONS_PER_ROW]
        for col, q in zip(st.columns(len(row)), row):
            col.button(q, on_click=queue_question, args=(q,), width="stretch", key=f"suggest_{q}")


def answer_question(assistant, lock: threading.Lock, question: str) -> None:
    history = chat_history(st.session_state.messages)
    st.session_state.messages.append({"role": "user", "content": question})
    with st.chat_message("user", avatar=AVATARS["user"]):
        st.markdown(question)
    report = st.session_state.report
    with st.chat_message("assistant", avatar=AVATARS["assistant"]):
        try:
            shown = st.empty()
            with lock:
                n_turns = len(report.turns)
                with shown.container():
                    answer = st.write_stream(assistant.stream_ask(report, question, history))
            answer = (answer if isinstance(answer, str) else "".join(map(str, answer))).strip()
            # the stream is checked once it has ended: a contradicting answer is replaced in place
            turn = report.turns[-1] if len(report.turns) > n_turns else None
            if turn is not None and turn["corrected"]:
                answer = turn["text"]
                shown.markdown(answer)
                st.caption(CORRECTED_NOTE)
            if not answer:
                answer = "(the model gave no answer; try rephrasing)"
                st.markdown(answer)
        except Exception as err:  # noqa: BLE001
            log.exception("answering failed")
            st.session_state.messages.pop()
            st.error(f"The assistant could not answer: {err}. Ask again or start over.")
            return
    st.session_state.messages.append({"role": "assistant", "content": answer,
                                      "corrected": bool(turn is not None and turn["corrected"])})


# ---------------------------------------------------------------- page
def main() -> None:
    st.set_page_config(page_title="AnomalyGPT inspection", page_icon=":material/troubleshoot:", layout="wide")
    st.markdown(CSS, unsafe_allow_html=True)
    init_state()
    checkpoint = checkpoint_name()
    inputs = sidebar(checkpoint)

    st.title(":material/troubleshoot: AnomalyGPT inspection")
    try:
        with st.spinner(f"Loading the model ({checkpoint})… the first start takes a while"):
            assistant, lock = load_assistant(checkpoint)
    except Exception as err:  # noqa: BLE001 - e.g. a missing checkpoint: say what and how to fix
        log.exception("loading the model failed")
        st.error(f"Could not load the model: {err}")
        return

    if inputs["pressed"]:
        run_inspection(assistant, lock, inputs)
    elif st.session_state.error and st.session_state.error_inputs != image_inputs_key(inputs):
        st.session_state.error = None  # the user replaced the images the error was about
    if st.session_state.error:
        st.error(st.session_state.error)
    if st.session_state.report is None:
        st.markdown(
            "Upload a photo of a part in the sidebar (or pick a bundled sample), optionally add 1-8 photos of good "
            "parts of the same kind, and press **Inspect**. You get a verdict, a heat map with the 3x3 position "
            "grid, the anomalous regions, and a chat to ask follow-up questions.")
        st.chat_input("Inspect an image first", disabled=True)
        return
    show_result()
    st.divider()
    show_chat(assistant, lock)


def run() -> None:
    """main() with a last guard: whatever goes wrong, the page shows one line, never a traceback."""
    try:
        main()
    except Exception as err:  # noqa: BLE001 - st.stop/st.rerun are BaseExceptions and pass through
        log.exception("unexpected error in the chat UI")
        st.error(f"Something went wrong: {err}. Press 'Start over' in the sidebar to continue.")


run()
