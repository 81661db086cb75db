"""llmserve's control plane: reconciles declared InferenceServices into supervised replicas."""
