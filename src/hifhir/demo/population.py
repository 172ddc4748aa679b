from sqlalchemy import Engine


def generate_population(engine: Engine, insurees: int, *, seed: int = 42, progress: bool = True) -> None:
    raise NotImplementedError
