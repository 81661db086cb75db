"""The simulator's request validation (vLLM 0.32's rules), tokenizers, metrics text and CLI profile flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmserve.workers.sim import HFTokenizer, ManualClock, SimEngine, WordTokenizer, get_profile, sim_plan
from llmserve.workers.sim.__main__ import build_parser, profile_from_args
from llmserve.workers.sim.metrics import MetricsInfo, render
from llmserve.workers.sim.protocol import ModelNames, SimError, parse_chat, parse_completion, parse_tokenize

NAMES = ModelNames(["smol"], ["adapter"])
TOK = WordTokenizer()
CHAT = [{"role": "user", "content": "hello there"}]


def chat(**body: Any) -> Any:
    return parse_chat({"model": "smol", "messages": CHAT, **body}, NAMES, TOK, max_model_len=64)


def error_of(call: Any, **body: Any) -> SimError:
    with pytest.raises(SimError) as info:
        call(**body)
    return info.value


def test_chat_request_fields() -> None:
    request = chat(max_tokens="7", n=2, stream="yes", stream_options={"include_usage": True}, ignore_eos=True)
    assert (request.max_tokens, request.n, request.stream, request.include_usage, request.ignore_eos) == (
        7, 2, True, True, True,
    )  # fmt: skip
    assert request.prompts == [TOK.encode(TOK.render_chat(CHAT), add_special_tokens=False)]
    assert chat(max_completion_tokens=3, max_tokens=9).max_tokens == 3
    assert chat(model="adapter").lora == "adapter"
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]
    assert chat(messages=parts).prompts == chat().prompts
    assert parse_chat({"messages": CHAT}, NAMES, TOK, 64).model == "smol"


@pytest.mark.parametrize(
    ("body", "status", "param", "text"),
    [
        ({"model": "other"}, 404, "model", "The model `other` does not exist. Valid aliases: smol, adapter."),
        ({"max_tokens": 0}, 400, "max_tokens", "max_tokens must be at least 1, got 0."),
        ({"max_tokens": 65}, 400, "max_tokens", "max_tokens=65 cannot be greater than max_model_len=64."),
        ({"max_tokens": "x"}, 400, "body.max_tokens", "int_parsing"),
        ({"n": 0}, 400, None, "n must be at least 1, got 0."),
        ({"stream_options": {"include_usage": True}}, 400, "stream_options", "only be defined when `stream=True`"),
        ({"min_tokens": 9, "max_tokens": 5}, 400, None, "min_tokens must be less than or equal to max_tokens=5"),
        ({"messages": []}, 400, None, "empty conversation"),
        ({"messages": "hi"}, 400, "body.messages", "list_type"),
        ({"messages": [{"role": "user", "content": "word " * 80}]}, 400, "input_tokens", "maximum context length"),
    ],
)
def test_chat_errors_follow_vllm(body: dict[str, Any], status: int, param: str | None, text: str) -> None:
    err = error_of(chat, **body)
    assert (err.status, err.param) == (status, param)
    assert text in err.message
    assert err.body()["error"]["code"] == status


def test_completion_prompt_forms() -> None:
    def prompts(prompt: Any) -> list[list[int]]:
        return parse_completion({"prompt": prompt}, NAMES, TOK, 64).prompts

    assert prompts("a b") == [TOK.encode("a b")]
    assert prompts([5, 6, 7]) == [[5, 6, 7]]
    assert prompts(["a", "b"]) == [TOK.encode("a"), TOK.encode("b")]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    empties: tuple[Any, ...] = ("", [], None)
    for bad in empties:
        assert "must be provided and non-empty" in error_of(prompts, prompt=bad).message
    assert error_of(lambda: prompts({"x": 1})).status == 400
    assert error_of(lambda: parse_completion([1], NAMES, TOK, 64)).param == "body"


def test_tokenize_bodies() -> None:
    ids, strs = parse_tokenize({"prompt": "hello world", "return_token_strs": True}, NAMES, TOK)
    assert ids == TOK.encode("hello world")
    assert strs
    ids, _ = parse_tokenize({"messages": CHAT}, NAMES, TOK)
    assert ids == TOK.encode(TOK.render_chat(CHAT), add_special_tokens=False)
    assert error_of(lambda: parse_tokenize({}, NAMES, TOK)).param == "body.prompt"
    assert error_of(lambda: parse_tokenize({"model": "x", "prompt": "a"}, NAMES, TOK)).status == 404


def test_word_tokenizer_is_deterministic_about_four_characters_a_token_and_round_trips_its_output() -> None:
    text = "The quick brown fox jumps over the lazy dog, again and again, until the evening light fades."
    assert TOK.encode(text) == WordTokenizer().encode(text)
    assert 3.0 <= len(text) / len(TOK.encode(text)) <= 5.0
    assert TOK.encode("<|im_start|>user") == [TOK.encode("<|im_start|>")[0], TOK.encode("user")[0]]
    out = list(TOK.output_vocab[:6])
    assert TOK.encode(TOK.decode(out)) == out
    assert "".join(TOK.piece(t) for t in out) == TOK.decode(out)


def test_hf_tokenizer_from_a_model_directory(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "the", "model", "\n"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>"}))
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ bos_token }} {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}{{ bos_token }} assistant{% endif %}"
    )
    hf = HFTokenizer(tmp_path)
    assert hf.render_chat([{"role": "user", "content": "hello"}]).split() == [
        "<|im_start|>", "user", "hello", "<|im_end|>", "<|im_start|>", "assistant",
    ]  # fmt: skip
    assert hf.encode("hello the model") == [5, 6, 7]
    assert set(hf.output_vocab) == {6, 7}  # "the" and "model" are single tokens in this vocabulary


def test_metrics_text_has_vllm_names_and_the_optional_families() -> None:
    sim = SimEngine(get_profile("cpu-smollm2"), ManualClock())
    sim.add_request([1, 2, 3], max_tokens=2, lora="a")
    sim.run_until_idle(lambda _: None)

    def text(legacy: bool, loras: int | None) -> str:
        info = MetricsInfo("smol", 128, 182, True, legacy, loras, 1.5)
        return render(sim.stats, sim.gauges(), info).decode()

    plain = text(False, None)
    for needle in (
        'vllm:num_requests_running{engine="0",model_name="smol"} 0.0',
        'vllm:num_requests_waiting{engine="0",model_name="smol"} 0.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="smol"} 0.0',
        "# TYPE vllm:prefix_cache_queries_total counter",
        'vllm:prefix_cache_queries_total{engine="0",model_name="smol"} 3.0',
        'vllm:prefix_cache_hits_total{engine="0",model_name="smol"} 0.0',
        'vllm:generation_tokens_total{engine="0",model_name="smol"} 2.0',
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="smol"} 1.0',
        'vllm:time_to_first_token_seconds_count{engine="0",model_name="smol"} 1.0',
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="smol"} 1.0',
        'block_size="128"',
        'num_gpu_blocks="182"',
    ):
        assert needle in plain
    assert "gpu_cache_usage_perc" not in plain
    assert "lora_requests_info" not in plain
    legacy = text(True, 1)
    assert 'vllm:gpu_cache_usage_perc{engine="0",model_name="smol"} 0.0' in legacy
    assert 'vllm:lora_requests_info{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""} 1.5' in legacy


def test_cli_flags_override_the_profile() -> None:
    args = build_parser().parse_args(
        ["--model", "m", "--profile", "h100-llama-8b", "--block-size", "32", "--decode-step-ms", "9.5",
         "--num-gpu-blocks-override", "100", "--lora-modules", "a=/path", "b"]
    )  # fmt: skip
    profile = profile_from_args(args)
    assert (profile.name, profile.block_size, profile.step_base_ms, profile.num_blocks) == (
        "h100-llama-8b",
        32,
        9.5,
        100,
    )
    assert profile.max_num_seqs == get_profile("h100-llama-8b").max_num_seqs
    assert args.lora == ["a=/path", "b"]
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")


def test_worker_plan_runs_the_simulator_cli() -> None:
    plan = sim_plan("chat", profile="h100-llama-8b", args=["--num-blocks", "64", "--lora", "a"], python="py")
    command = plan.command("127.0.0.1", 9001)
    assert command[:3] == ["py", "-m", "llmserve.workers.sim"]
    args = build_parser().parse_args(command[3:])
    assert (args.host, args.port, args.model, args.lora) == ("127.0.0.1", 9001, "chat", ["a"])
    assert profile_from_args(args).num_blocks == 64
    assert plan.health_path == "/health"
    assert plan.protocol == "openai"
