from .class_dictionary import ClassDictionary
from .speech_dataset import SpeechClassDataset
from .text_dataset import TextClassDataset
