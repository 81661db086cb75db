from __future__ import annotations

from llmserve.protocol.vllm_metrics import parse_vllm_metrics

CURRENT = """
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 40.0
vllm:cache_config_info{block_size="128",cache_dtype="auto",num_gpu_blocks="182",enable_prefix_caching="True"} 1.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.7e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="c",waiting_lora_adapters="d"} 1.8e+09
not_vllm_metric 1.0
vllm:broken_line
"""

OLDER = """
vllm:num_requests_running{model_name="m"} 1.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
vllm:gpu_prefix_cache_queries_total{model_name="m"} 10.0
vllm:gpu_prefix_cache_hits_total{model_name="m"} 5.0
"""


def test_current_vllm_metrics() -> None:
    scraped = parse_vllm_metrics(CURRENT)
    assert (scraped.running, scraped.waiting) == (5.0, 4.0)  # engines summed; *_by_reason ignored
    assert scraped.kv_usage == 0.375  # averaged over engines
    assert (scraped.block_size, scraped.num_blocks) == (128, 182)
    assert (scraped.prefix_queries, scraped.prefix_hits) == (100.0, 40.0)
    assert scraped.lora_running == frozenset({"c"})  # the newest series wins
    assert scraped.lora_waiting == frozenset({"d"})
    assert scraped.max_lora == 2


def test_older_metric_names() -> None:
    scraped = parse_vllm_metrics(OLDER)
    assert scraped.kv_usage == 0.75
    assert (scraped.prefix_queries, scraped.prefix_hits) == (10.0, 5.0)
    assert scraped.block_size is None


def test_current_name_wins_over_older_when_both_present() -> None:
    both = parse_vllm_metrics(CURRENT + OLDER)
    assert both.kv_usage == 0.375


def test_empty_and_garbage() -> None:
    scraped = parse_vllm_metrics('garbage\n\nvllm:num_requests_running{x="1"} not-a-number\n')
    assert (scraped.running, scraped.waiting, scraped.kv_usage) == (0.0, 0.0, 0.0)
