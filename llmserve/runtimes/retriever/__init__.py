"""The retriever runtime: an in-memory vector index over a document set, embedded by an OpenAI-compatible
embeddings service, answering KServe V1 `:predict` (plain retrieval, or a chat request augmented with the passages
it retrieved: the first step of a RAG graph). See README.md."""
