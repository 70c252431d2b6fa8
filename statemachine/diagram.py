"""Print the update cycle as a Mermaid state diagram: `python -m statemachine.diagram`."""

from .cycle import UPDATE_CYCLE

if __name__ == "__main__":
    print(UPDATE_CYCLE.to_mermaid(), end="")
