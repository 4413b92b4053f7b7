"""Build: one module per model family, rebuilding it in Keras from its source weights, checking it against the
source, and exporting int8 + float TFLite with its manifest entry and card (``mtcnn``, ``mobilefacenet``,
``dlib_resnet``). ``mtcnn_keras`` and ``mobilefacenet_keras`` hold the Keras rebuilds, ``tfjs`` reads the
TensorFlow.js graph models they start from."""
