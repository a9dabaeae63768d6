"""Models-from-code entry point for MLflow (see ``model.pyfunc``)."""

import mlflow.models

from model.pyfunc import AdriskPyfunc

mlflow.models.set_model(AdriskPyfunc())
