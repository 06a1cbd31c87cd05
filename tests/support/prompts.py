"""Prompts of known difficulty for tests."""

EASY = "What is the capital of France?"
HARD = (
    "Design and implement a lock-free multi-producer queue in C++. Analyze its time and space complexity, "
    "prove that it is linearizable, derive the memory-ordering constraints, and compare the trade-offs against "
    "a mutex-based design step by step. Explain how you would debug and benchmark it.\n"
    "1. API\n2. Memory ordering\n3. Tests\n```cpp\ntemplate <class T> class Queue;\n```"
)
