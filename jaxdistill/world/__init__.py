"""The embedded world (design §8): procedural captioned images (`scene`), the shipped
pixel-space teacher trained on them (`teacher_training`, diffusers folder in assets/teacher),
the judge that reads images back (`judge`, assets/judge) and the metrics built on it (`metrics`)."""

import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TEACHER = os.path.join(ASSETS, "teacher")
JUDGE = os.path.join(ASSETS, "judge")
PROMPTS = os.path.join(ASSETS, "prompts.txt")
