"""The V2 (Open Inference Protocol) runtime for predictive models: `python -m llmserve.runtimes.server`.

See README.md in this directory. Frameworks (scikit-learn, XGBoost, LightGBM) are imported only when a model of
theirs loads; nothing here is imported by the gateway.
"""
