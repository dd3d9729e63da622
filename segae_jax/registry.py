"""Name -> object registries, so configs choose models, losses, objectives, views and datasets by
string; a user's module registers its own with the public decorators (segae_jax.register_*,
loaded by config.plugins)."""
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
    MODELS.alias('vae_old', 'vae')  # 'vae_old' is another name of the same entry.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, T] = {}
    self._aliases: Dict[str, str] = {}   # {alias: the name it stands for}

  def _check_free(self, name: str) -> None:
    if name in self._entries or name in self._aliases:
      raise UserInputError(f'{self.kind} {name!r} is registered twice (a name already taken; '
                           'choose another)')

  def register(self, name: str) -> Callable[[T], T]:
    """A decorator registering its argument under `name`.

    Raises:
      UserInputError: `name` is taken (an entry or an alias), in one line naming the kind.
    """
    self._check_free(name)

    def decorator(obj: T) -> T:
      self._check_free(name)
      self._entries[name] = obj
      return obj
    return decorator

  def alias(self, name: str, target: str) -> None:
    """Makes `name` another name of the registered entry `target` (an old config name kept
    working). Raises UserInputError when `name` is taken or `target` is not registered."""
    self._check_free(name)
    self.get(target)
    self._aliases[name] = target

  def get(self, name: str) -> T:
    """Returns the entry for `name` (or the one it is an alias of); raises UserInputError naming
    the known ones otherwise."""
    name = self._aliases.get(name, name)
    if name not in self._entries:
      raise UserInputError(
          f'unknown {self.kind} {name!r}; known: {", ".join(self.names())}')
    return self._entries[name]

  def canonical(self, name: str) -> str:
    """The registered name `name` stands for: itself, or the target of an alias."""
    return self._aliases.get(name, name)

  def names(self) -> List[str]:
    """Every name that get() accepts, sorted; an alias listed as 'alias (= target)'."""
    return sorted(list(self._entries) + [f'{a} (= {t})' for a, t in self._aliases.items()])

  def __contains__(self, name: str) -> bool:
    return name in self._entries or name in self._aliases
