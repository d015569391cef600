"""Models-from-code entry of the mmser pyfunc model: MLflow copies this file into the model and runs it to load.

The model object is built here, from the installed `mmser` package, instead of being unpickled; its
weights and card come from the model's artifacts (see mmser.pyfunc.EmotionModel.load_context).
"""

import mlflow

from mmser.pyfunc import EmotionModel

mlflow.models.set_model(EmotionModel())
