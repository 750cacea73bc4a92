"""python -m npgpt.exercises init DIR | check DIR [EXERCISE ...]"""
from . import main

main()
