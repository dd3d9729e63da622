"""Name -> object registries, so configs choose models, losses and datasets by string."""
from typing import Callable, Dict, Generic, List, TypeVar

from segae_jax.errors import UserInputError

T = TypeVar('T')


class Registry(Generic[T]):
  """A small mapping from names to constructors or functions.

  Usage:
    MODELS = Registry('model')

    @MODELS.register('vae')
    class VAE(nn.Module): ...

    MODELS.get('vae')  # -> VAE; an unknown name raises UserInputError listing the known ones.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f'{self.kind} {name!r} is registered twice')
      self._entries[name] = obj
      return obj
    return decorator

  def get(self, name: str) -> T:
    """Returns the entry for `name`; raises UserInputError naming the known ones otherwise."""
    if name not in self._entries:
      raise UserInputError(
          f'unknown {self.kind} {name!r}; known: {", ".join(sorted(self._entries))}')
    return self._entries[name]

  def names(self) -> List[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
