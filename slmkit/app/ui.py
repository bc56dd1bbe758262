"""`slmkit serve ui [MODEL]`: a local Gradio app — streaming chat, ReAct agent traces, and the model's facts.

Chat: a streaming ChatInterface with system prompt, temperature / max tokens / stop strings, a stop button
(it cancels the generation, not just the display), and tokens/s under each answer.
Agent: HotpotQA / FEVER / ALFWorld / WebShop tasks (or a free question over the local corpus) run by the
agents' ReAct loop; every Thought, Action (tool + argument) and Observation is its own collapsible message
(pending while it runs, done with its duration).
Model: backend, file, quantization, size, context, the artifact's parity report, a latency measurement.

Everything that touches the model goes through one GenerationService (one queue, one worker); Gradio's queue
in front of it is bounded, and Ctrl-C closes both.
"""

# no `from __future__ import annotations`: Gradio finds the gr.Request parameters by their real annotations
import copy
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from slmkit.app.agent_trace import TraceEvent, run_episode, split_tool, thought_of
from slmkit.app.generation import GenerationService, Handle, Job, QueueFull, context_length
from slmkit.app.model_info import artifact_facts, measure_latency
from slmkit.errors import SlmkitError
from slmkit.serve.base import SamplingParams

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_FILE = "SmolLM2-135M-Instruct-q4_k_m.gguf"
MAX_MESSAGE_CHARS = 4000
MAX_SYSTEM_CHARS = 2000
MAX_QUESTION_CHARS = 500
MAX_NEW_TOKENS = 1024
MAX_AGENT_STEPS = 50
MAX_SHOWN_CHARS = 3000  # an observation longer than this is cut in the trace (the model saw all of it)
BENCHMARKS = {"HotpotQA": "hotpotqa", "FEVER": "fever", "ALFWorld": "alfworld", "WebShop": "webshop"}
FREE_QUESTION = "Free question (local corpus)"


def default_model() -> Path:
    """The pulled SmolLM2-135M-Instruct as a q4_k_m GGUF; a one-line error saying how to get it otherwise."""
    from slmkit.hub import list_models

    row = next(r for r in list_models() if r["name"] == DEFAULT_MODEL)
    folder = Path(row["path"])
    gguf = folder / DEFAULT_FILE
    if gguf.is_file():
        return gguf
    if row["hf_dir"]:
        raise SlmkitError(f"no model given and {gguf} is missing: make it with "
                          f"`slmkit export gguf {folder / 'hf'} {gguf} --type q4_k_m` (or pass MODEL)")
    raise SlmkitError(f"no model given and {DEFAULT_MODEL} is not pulled: run `slmkit models pull {DEFAULT_MODEL}`, "
                      f"then `slmkit export gguf {folder / 'hf'} {gguf} --type q4_k_m` (or pass MODEL)")


def _text(content: Any) -> str:
    """A Gradio message's content as plain text (Gradio 6 gives a list of {"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(_text(c) for c in content)
    return ""


def _task_text(task) -> str:
    data = task.data or {}
    for key in ("question", "claim", "instruction_text"):
        if data.get(key):
            return str(data[key])
    return f"{data.get('type', '')} game {task.id}".strip()


class TraceView:
    """Agent TraceEvents -> the Chatbot's messages: Thought / Action / Observation boxes, then a summary."""

    def __init__(self, gr) -> None:
        self.gr = gr
        self.messages: list = []
        self.thought = None  # the box of the model call running now
        self.action = None
        self.forced = False

    def _box(self, title: str, content: str = "", status: str = "done", duration: float | None = None):
        meta = {"title": title, "status": status}
        if duration is not None:
            meta["duration"] = round(duration, 2)
        msg = self.gr.ChatMessage(role="assistant", content=content, metadata=meta)
        self.messages.append(msg)
        return msg

    def add(self, ev: TraceEvent) -> None:
        if ev.kind == "prompt":
            self.messages.append(self.gr.ChatMessage(role="user", content=ev.text[:MAX_SHOWN_CHARS]))
        elif ev.kind == "generating":
            again = any(m.metadata.get("title", "").startswith(f"Thought {ev.step}") for m in self.messages
                        if m.metadata)
            title = f"Thought {ev.step}" + (" — follow-up call for the action line" if again else "")
            self.thought = self._box(title, "", status="pending")
        elif ev.kind == "token" and self.thought is not None:
            self.thought.content = ev.text
        elif ev.kind == "output" and self.thought is not None:
            shown = thought_of(ev.text) or ev.text.strip()
            self.thought.content = shown
            self.thought.metadata.update(status="done", duration=round(ev.seconds, 2))
            if not shown:
                self.messages.remove(self.thought)
            self.thought = None
        elif ev.kind == "action":
            self.forced = ev.forced
            last = self.messages[-1] if self.messages else None
            if last is not None and last.metadata and last.metadata.get("title", "").startswith("Thought") and \
                    _text(last.content).strip().lower() == ev.text.strip().lower():
                self.messages.remove(last)  # the turn was only the action (ALFWorld / WebShop layouts)
            tool, arg = split_tool(ev.text)
            label = f"{tool}[{arg}]" if arg or ev.text.strip().endswith("]") else tool
            title = f"Action (forced: step budget spent): {label}" if ev.forced else f"Action {ev.step}: {label}"
            self.action = self._box(title[:200],
                                    f"tool: **{tool}**" + (f"\n\nargument: `{arg}`" if arg else ""), status="pending")
        elif ev.kind == "observation":
            if self.action is not None:
                self.action.metadata.update(status="done", duration=round(ev.seconds, 3))
                self.action = None
            text = ev.text if len(ev.text) <= MAX_SHOWN_CHARS else ev.text[:MAX_SHOWN_CHARS] + " …"
            self._box("Observation (forced action)" if self.forced else f"Observation {ev.step}", text)
        elif ev.kind == "invalid":
            self._box(f"Action {ev.step}: invalid", f"the model's turn had no valid action ({ev.text})")
            self._box(f"Observation {ev.step}", f"Invalid action: {ev.text}")
        elif ev.kind == "done":
            self.messages.append(self.gr.ChatMessage(role="assistant", content=episode_summary(ev.record or {})))

    def stopped(self, why: str) -> None:
        for m in self.messages:
            if m.metadata and m.metadata.get("status") == "pending":
                m.metadata["status"] = "done"
        self.messages.append(self.gr.ChatMessage(role="assistant", content=why))


def episode_summary(record: dict) -> str:
    if record.get("error"):
        return f"**Episode failed**: {record['error']}"
    info, metrics, stats = record.get("info") or {}, record.get("metrics") or {}, record.get("stats") or {}
    parts = [f"**Finished** after {record.get('n_steps', 0)} steps in {record.get('seconds', 0):.1f} s"]
    if "answer" in info:
        parts.append((f"answer `{info['answer']}`" if info.get("answer") else "no answer") + (f" (gold `{info.get('gold')}`)" if info.get("gold") else ""))
    if metrics and not ("gold" in info and not info.get("gold")):  # a free question has nothing to score against
        parts.append(" · ".join(f"{k} {v:g}" for k, v in metrics.items()))
    parts.append(f"{stats.get('invalid_actions', 0)} invalid actions · {stats.get('generated_tokens', 0)} tokens generated")
    if record.get("end"):
        parts.append(f"ended: {record['end']}")
    return " — ".join(parts)


class DemoApp:
    """The UI's behaviour, independent of the page layout (the browser test drives the page built by `build`)."""

    def __init__(self, service: GenerationService, model_path: str | Path, corpus: str | None = None) -> None:
        self.service, self.model_path, self.corpus = service, Path(model_path), corpus
        self._sessions: dict[tuple[str, str], Handle] = {}
        self._lock = threading.Lock()
        self._envs: dict[str, tuple] = {}
        self._env_lock = threading.Lock()

    # ---- sessions: one running handle per (browser session, tab), so a stop button finds it -------------
    def _track(self, key: tuple[str, str], handle: Handle) -> None:
        """`handle` is what this session's tab runs now (a previous one still running there is cancelled)."""
        with self._lock:
            old = self._sessions.get(key)
            self._sessions[key] = handle
        if old is not None and old is not handle:
            old.cancel()

    def _untrack(self, key: tuple[str, str], handle: Handle) -> None:
        with self._lock:
            if self._sessions.get(key) is handle:
                del self._sessions[key]

    def stop(self, session: str, tab: str) -> None:
        with self._lock:
            handle = self._sessions.pop((session, tab), None)
        if handle is not None:
            handle.cancel()

    def _runtime(self):
        self.service.ready.wait()
        if self.service.load_error is not None:
            raise SlmkitError(f"the model failed to load: {self.service.load_error}")
        return self.service.runtime

    # ---- chat -----------------------------------------------------------------------------------------
    def chat_prompt(self, message: str, history: list, system: str, max_tokens: int) -> list[int]:
        """Prompt ids for this turn: system + as much recent history as fits with `max_tokens` to generate."""
        if not message or not message.strip():
            raise SlmkitError("the message is empty")
        if len(message) > MAX_MESSAGE_CHARS:
            raise SlmkitError(f"the message has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")
        if len(system or "") > MAX_SYSTEM_CHARS:
            raise SlmkitError(f"the system prompt has {len(system)} characters; the limit is {MAX_SYSTEM_CHARS}")
        runtime = self._runtime()
        turns = [{"role": m["role"], "content": _text(m.get("content"))} for m in history or []
                 if m.get("role") in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]
        head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
        ctx = context_length(runtime)
        while True:
            ids = runtime.encode_prompt(head + turns + [{"role": "user", "content": message}])
            if ctx is None or len(ids) + max_tokens <= ctx:
                return ids
            if not turns:
                raise SlmkitError(f"this message needs {len(ids)} tokens + {max_tokens} to generate; "
                                  f"the model's context is {ctx}")
            turns = turns[2:] if len(turns) > 1 else []  # drop the oldest exchange

    def chat(self, message: str, history: list, system: str, temperature: float, max_tokens: int, stop: str,
             session: str = ""):
        """Streams the answer (str pieces so far), then the answer plus a statistics box."""
        import gradio as gr

        max_tokens = max(1, min(int(max_tokens), MAX_NEW_TOKENS))
        try:
            ids = self.chat_prompt(message, history, system, max_tokens)
            stops = [s.encode().decode("unicode_escape") for s in (stop or "").split(",") if s.strip()]
            params = SamplingParams(max_new_tokens=max_tokens, temperature=float(temperature), seed=int(time.time()),
                                    stop=stops)
            handle = self.service.submit(Job(ids, params))
        except (SlmkitError, QueueFull) as exc:
            raise gr.Error(str(exc)) from None
        self._track((session, "chat"), handle)
        text = ""
        try:
            for piece in handle:
                text += piece
                yield text
            res = handle.result
            rate = (res.completion_tokens - 1) / (res.total_s - res.ttft_s) if res.ttft_s is not None and \
                res.completion_tokens > 1 and res.total_s > res.ttft_s else 0.0
            stopped = " · stopped" if res.finish_reason == "cancelled" else ""
            title = f"{res.completion_tokens} tokens · {rate:.1f} tokens/s{stopped}"
            detail = (f"prompt {res.prompt_tokens} tokens · first token {1000 * (res.ttft_s or 0):.0f} ms · "
                      f"total {res.total_s:.2f} s · finish: {res.finish_reason}")
            yield [gr.ChatMessage(role="assistant", content=text),
                   gr.ChatMessage(role="assistant", content=detail,
                                  metadata={"title": title, "status": "done", "duration": round(res.total_s, 2)})]
        finally:
            handle.cancel()  # the page went away or stop was pressed: free the slot at once
            self._untrack((session, "chat"), handle)

    # ---- agent ----------------------------------------------------------------------------------------
    def environment(self, benchmark: str):
        """(env, format) of a benchmark, loaded once; the free question uses HotpotQA's format and corpus (or
        --corpus)."""
        key = "hotpotqa" if benchmark == FREE_QUESTION else BENCHMARKS.get(benchmark)
        if key is None:
            raise SlmkitError(f"unknown benchmark '{benchmark}' (known: {', '.join([*BENCHMARKS, FREE_QUESTION])})")
        with self._env_lock:
            if key not in self._envs:
                from slmkit.agents.registry import load_environment

                self._envs[key] = load_environment(key)
            return self._envs[key]

    def free_environment(self):
        from slmkit.agents.hotpotqa import score
        from slmkit.agents.qa import WikiQAEnv

        env, fmt = self.environment(FREE_QUESTION)
        source, mode = env.source, env.mode
        if self.corpus:
            from slmkit.agents.local_wiki import LocalWiki, load_corpus

            source, mode = LocalWiki(load_corpus(self.corpus), label=str(self.corpus)), "local-corpus"
        return WikiQAEnv("free-question", mode, source, [], lambda t: f"Question: {t.data['question']}", score,
                         comparable=False), fmt

    def preview(self, benchmark: str, index: float) -> tuple[str, int]:
        """(markdown describing the chosen task, the benchmark's step budget)."""
        if benchmark == FREE_QUESTION:
            env, fmt = self.environment(benchmark)
            label = self.corpus or "the HotpotQA distractor paragraphs"
            return f"Ask anything; the agent searches {label}.", min(fmt.max_steps, MAX_AGENT_STEPS)
        env, fmt = self.environment(benchmark)
        tasks = env.tasks()
        k = max(0, min(int(index or 0), len(tasks) - 1))
        return (f"**{benchmark}** ({env.mode}) — task {k} of {len(tasks)}: {_task_text(tasks[k])}",
                min(fmt.max_steps, MAX_AGENT_STEPS))

    def episode_setup(self, benchmark: str, index: float, question: str, max_steps: float):
        from slmkit.agents.base import Task

        steps = max(1, min(int(max_steps or 1), MAX_AGENT_STEPS))
        if benchmark == FREE_QUESTION:
            question = (question or "").strip()
            if not question:
                raise SlmkitError("type a question for the free-question mode")
            if len(question) > MAX_QUESTION_CHARS:
                raise SlmkitError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
            env, fmt = self.free_environment()
            task = Task(id=f"free-{abs(hash(question)) % 10**8}", data={"question": question, "answer": ""})
        else:
            base, fmt = self.environment(benchmark)
            tasks = base.tasks()
            k = int(index or 0)
            if not 0 <= k < len(tasks):
                raise SlmkitError(f"task {k}: {benchmark} has tasks 0..{len(tasks) - 1}")
            env, task = base.spawn(), tasks[k]
        fmt = copy.copy(fmt)
        fmt.max_steps = steps
        return env, fmt, task

    def run_agent(self, benchmark: str, index: float, question: str, max_steps: float, session: str = ""):
        """Streams the trace's messages as the episode runs."""
        import gradio as gr

        try:
            self._runtime()
            env, fmt, task = self.episode_setup(benchmark, index, question, max_steps)
            handle = self.service.submit_call(lambda rt, h: run_episode(rt, h, env, fmt, task))
        except (SlmkitError, QueueFull) as exc:
            raise gr.Error(str(exc)) from None
        self._track((session, "agent"), handle)
        view = TraceView(gr)
        try:
            for ev in handle:
                view.add(ev)
                yield view.messages
            if handle.result is not None and handle.result.finish_reason == "cancelled":
                view.stopped("**Stopped** — the episode was cancelled.")
            yield view.messages
        except Exception as exc:  # noqa: BLE001 - the episode's error is shown in the trace
            view.stopped(f"**Error**: {type(exc).__name__}: {exc}")
            yield view.messages
        finally:
            handle.cancel()
            self._untrack((session, "agent"), handle)

    # ---- model ----------------------------------------------------------------------------------------
    def model_markdown(self) -> str:
        try:
            facts = artifact_facts(self._runtime(), self.model_path)
        except SlmkitError as exc:
            return f"**Model not loaded**: {exc}"
        rows = [("Backend", facts["backend"]), ("File", f"`{facts['file']}`"), ("Quantization", facts["quantization"]),
                ("Size", facts["size"]), ("Context", f"{facts['context']} tokens" if facts["context"] else "unknown")]
        if "parameters" in facts:
            rows.append(("Parameters", facts["parameters"]))
        rows.append(("Load time", f"{self.service.load_seconds:.1f} s"))
        out = ["| Artifact | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
        parity = facts["parity"]
        out.append("\n### Parity report")
        if parity is None:
            out.append("No parity report beside this artifact (it was not produced by a parity-gated `slmkit export`).")
        elif "error" in parity:
            out.append(f"`{parity['file']}`: {parity['error']}")
        else:
            verdict = "passed" if parity.get("passed") else "FAILED"
            out.append(f"`{parity['file']}` — **{verdict}** against the torch fp32 model")
            out += ["", "| measure | value |", "|---|---|"]
            for key in ("type", "top1_agreement", "ppl_ratio", "ppl_reference", "ppl_runtime", "max_rel_err",
                        "mean_kl", "positions"):
                if key in parity:
                    v = parity[key]
                    out.append(f"| {key} | {v:.4g} |" if isinstance(v, float) else f"| {key} | {v} |")
            if parity.get("bounds"):
                out.append(f"| bounds | {', '.join(f'{k} {v}' for k, v in parity['bounds'].items())} |")
            if parity.get("tensor_types"):
                out.append(f"| tensor types | {', '.join(f'{k}: {v}' for k, v in parity['tensor_types'].items())} |")
        return "\n".join(out)

    def latency_markdown(self) -> str:
        import gradio as gr

        try:
            self._runtime()
            handle = self.service.submit_call(lambda rt, h: measure_latency(rt))
            lat = handle.wait().value
        except (SlmkitError, QueueFull) as exc:
            raise gr.Error(str(exc)) from None
        return (f"**Measured now** on this machine: first token after a {lat['prompt_tokens']}-token prompt "
                f"**{lat['ttft_ms']:.0f} ms**, greedy decode **{lat['decode_tokens_per_s']:.1f} tokens/s** "
                f"({lat['new_tokens']} new tokens, best of {lat['repeats']}).")

    # ---- page -----------------------------------------------------------------------------------------
    def build(self, max_queue: int = 16):
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr

        def session_of(request) -> str:
            return getattr(request, "session_hash", None) or ""

        def chat_fn(message, history, system, temperature, max_tokens, stop, request: gr.Request):
            yield from self.chat(message, history, system, temperature, max_tokens, stop, session_of(request))

        def agent_fn(benchmark, index, question, max_steps, request: gr.Request):
            yield from self.run_agent(benchmark, index, question, max_steps, session_of(request))

        def stop_chat(request: gr.Request):
            self.stop(session_of(request), "chat")

        def stop_agent(request: gr.Request):
            self.stop(session_of(request), "agent")

        def preview_fn(benchmark, index):
            try:
                text, steps = self.preview(benchmark, index)
            except SlmkitError as exc:
                return f"**Not available**: {exc}", gr.update(), gr.update(), gr.update()
            free = benchmark == FREE_QUESTION
            return text, gr.update(value=steps), gr.update(visible=free), gr.update(visible=not free)

        with gr.Blocks(title="slmkit", analytics_enabled=False) as demo:
            gr.Markdown(f"## slmkit — `{self.model_path.name}`")
            with gr.Tab("Chat", id="chat"):
                system = gr.Textbox(label="System prompt", max_length=MAX_SYSTEM_CHARS, lines=2,
                                    placeholder="(empty: the chat template's default)", render=False)
                temperature = gr.Slider(0.0, 2.0, value=0.3, step=0.05, label="Temperature", render=False)
                max_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=256, step=1, label="Max new tokens", render=False)
                stop = gr.Textbox(label="Stop strings (comma separated, \\n allowed)", render=False)
                textbox = gr.Textbox(placeholder="Message", max_length=MAX_MESSAGE_CHARS, elem_id="chat-input",
                                     submit_btn=True, stop_btn=True, render=False)
                chat = gr.ChatInterface(chat_fn, chatbot=gr.Chatbot(height=480, elem_id="chat-log", label="Chat"),
                                        textbox=textbox, additional_inputs=[system, temperature, max_tokens, stop],
                                        additional_inputs_accordion=gr.Accordion("Settings", open=False, render=False),
                                        concurrency_limit=1, fill_height=False)
                chat.textbox.stop(stop_chat, None, None, queue=False, concurrency_limit=None)
            with gr.Tab("Agent", id="agent"):
                with gr.Row():
                    benchmark = gr.Dropdown([*BENCHMARKS, FREE_QUESTION], value="HotpotQA", label="Benchmark",
                                            elem_id="agent-benchmark")
                    index = gr.Number(0, precision=0, minimum=0, label="Task", elem_id="agent-task")
                    steps = gr.Slider(1, MAX_AGENT_STEPS, value=7, step=1, label="Max steps", elem_id="agent-steps")
                question = gr.Textbox(label="Free question", max_length=MAX_QUESTION_CHARS, visible=False,
                                      elem_id="agent-question")
                preview = gr.Markdown(elem_id="agent-preview")
                with gr.Row():
                    run = gr.Button("Run episode", variant="primary", elem_id="agent-run")
                    halt = gr.Button("Stop", elem_id="agent-stop")
                trace = gr.Chatbot(height=720, label="ReAct trace", elem_id="agent-trace")
                for trigger in (benchmark.change, index.change):
                    trigger(preview_fn, [benchmark, index], [preview, steps, question, index], concurrency_limit=None)
                demo.load(preview_fn, [benchmark, index], [preview, steps, question, index], concurrency_limit=None)
                go = run.click(agent_fn, [benchmark, index, question, steps], trace, concurrency_limit=1)
                halt.click(stop_agent, None, None, cancels=[go], queue=False, concurrency_limit=None)
            with gr.Tab("Model", id="model"):
                facts = gr.Markdown(elem_id="model-facts")
                measure = gr.Button("Measure latency", elem_id="model-measure")
                latency = gr.Markdown(elem_id="model-latency")
                demo.load(self.model_markdown, None, facts, concurrency_limit=None)
                measure.click(self.latency_markdown, None, latency, concurrency_limit=1)
        demo.queue(max_size=max_queue, default_concurrency_limit=1)
        return demo


def launch(demo, host: str, port: int):
    """Start the Gradio server without blocking; returns its local URL."""
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, ssr_mode=False,
                            show_error=True, quiet=True, inbrowser=False, share=False)
    return url


def serve_ui(model: str, backend: str | None = None, host: str = "127.0.0.1", port: int = 7860,
             corpus: str | None = None, max_queue: int = 16, load_options: dict | None = None) -> int:
    """Load `model` and serve the UI until Ctrl-C."""
    from slmkit.serve import load

    if not Path(model).exists():
        raise SlmkitError(f"{model}: no such model file or folder")
    service = GenerationService(lambda: load(model, backend=backend, **(load_options or {})), max_queue=max_queue)
    app = DemoApp(service, model, corpus)
    demo = app.build(max_queue=max_queue)
    try:
        url = launch(demo, host, port)
        print(f"slmkit ui on {url} (model {model}; Ctrl-C stops)", file=sys.stderr)
        service.ready.wait()
        if service.load_error is not None:
            raise SlmkitError(f"{model}: could not load: {service.load_error}")
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        demo.close()
        stopped = service.close()
        if not stopped:
            sys.stderr.flush()
            os._exit(0)
    return 0
