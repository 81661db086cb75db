"""`python -m llmserve.workers.warm --control-socket PATH --worker-id ID`: one pooled vLLM worker process."""

from llmserve.workers.warm.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
