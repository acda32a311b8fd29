"""The generator G_θ(y): one text-conditioned radiance field for the whole toy vocabulary.

For a prompt y with MiniLM token embeddings e_1..e_L (the teacher's text encoder):

    c(y)        = mean_l e_l                                  (the prompt code, [D])
    (γ_k, β_k)  = split(M(c(y)))                              (a small MLP M, zero-initialised last layer)
    f(x; y)     = grid_{k(y)}(x)                              (``grid: category``: the category word's own hash
                                                               grid; ``shared``: one grid for every prompt)
    h_k         = ReLU((1 + γ_k) ⊙ (W_k h_{k−1} + b_k) + β_k) (FiLM of every hidden layer, Perez et al. 2018)
    (logit, albedo logits) = W_out h_K + b_out                (then the same activations as a plain Field)

With ``modulate: albedo`` the logit reads a second pass of the same layers without FiLM (the shape depends on
the category only) and the albedo logits the FiLM pass.

Conditioned on one prompt the FiLM coefficients are constants, so G_θ(y) is exactly a plain
:class:`~dreamdistill.scene.field.Field` (:meth:`InstantField.to_field`, folding FiLM into the linear layer,
:func:`fold_film`): export, rendering, metrics and a per-prompt run take it unchanged. Training renders
:meth:`InstantField.bind`, the same field with gradients flowing into θ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from dreamdistill.config import Range
from dreamdistill.errors import DreamDistillError
from dreamdistill.scene.config import SceneConfig
from dreamdistill.scene.field import Field
from dreamdistill.scene.hashgrid import HashGrid
from dreamdistill.toyworld.captions import parse_prompt
from dreamdistill.toyworld.world import CATEGORIES

GridConditioning = Literal["shared", "category"]
Modulated = Literal["all", "albedo"]


@dataclass
class ConditioningConfig:
    """How the prompt reaches the field."""

    grid: GridConditioning = "category"
    """category: one hash grid per toy category, picked by the prompt's category word (each category's geometry
    has its own table; colours share it); shared: one hash grid for every prompt (the text reaches the field only
    through FiLM)."""
    modulate: Modulated = "all"
    """all: FiLM acts on the MLP that gives density and albedo (the prompt may change the shape); albedo: the
    density comes from the same MLP without FiLM and only the albedo from the modulated one, so every colour of
    a category has the category grid's one shape (a held-out pair gets the shape its category learnt from the
    other colours). A bound prompt is then a plain Field of twice the MLP width (:meth:`InstantField.field_scene`)."""
    code_dim: Annotated[int, Range(1, 1024)] = 32
    """Width of the hidden layer of M, the MLP from the prompt code (mean MiniLM token embedding) to the FiLM
    coefficients."""


def mean_token_embedding(text: torch.Tensor) -> torch.Tensor:
    """The prompt code c(y) = mean_l e_l: [B, L, D] token embeddings -> [B, D] (float32)."""
    return text.float().mean(dim=1)


def film(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """FiLM, h' = (1 + γ) ⊙ h + β (γ = β = 0: the identity), broadcast over the rows of h [N, H]."""
    return h * (1.0 + gamma) + beta


def fold_film(weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
              beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer followed by FiLM with fixed (γ, β) as one linear layer:
    (1 + γ) ⊙ (W h + b) + β = W' h + b' with W' = diag(1 + γ) W [H, I] and b' = (1 + γ) ⊙ b + β [H]."""
    scale = 1.0 + gamma
    return weight * scale[:, None], bias * scale + beta


def category_of(prompt: str) -> str:
    """The toy category a prompt names (one line when it names none)."""
    _, category, _ = parse_prompt(prompt)
    if category is None:
        raise DreamDistillError(f"{prompt!r} names no toy-world category; the instant generator knows "
                                f"{', '.join(CATEGORIES)} (e.g. \"a red chair\")")
    return category


def fold_film_pair(weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                   first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of the two-stream MLP (``modulate: albedo``) as one linear layer on the stacked streams
    [h_plain; h_film]: the plain stream W h + b and the FiLM stream (:func:`fold_film`) side by side; the first
    layer reads one shared input (W' = [W; W_film], [2H, I]), later ones are block-diagonal ([2H, 2H])."""
    film_weight, film_bias = fold_film(weight, bias, gamma, beta)
    if first:
        return torch.cat([weight, film_weight]), torch.cat([bias, film_bias])
    return torch.block_diag(weight, film_weight), torch.cat([bias, film_bias])


class ModulatedMLP(nn.Module):
    """The generator's MLP with one prompt's FiLM coefficients applied (a Field's ``mlp`` during training); with
    ``albedo_only`` the density output reads a second, unmodulated pass of the same layers."""

    def __init__(self, hidden: nn.ModuleList, output: nn.Linear, gammas: list[torch.Tensor],
                 betas: list[torch.Tensor], albedo_only: bool = False):
        super().__init__()
        self.hidden, self.output = hidden, output
        self.gammas, self.betas = gammas, betas
        self.albedo_only = albedo_only

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[N, grid features] -> [N, 4] (density logit, albedo logits)."""
        plain = h
        for linear, gamma, beta in zip(self.hidden, self.gammas, self.betas):
            h = torch.relu(film(linear(h), gamma, beta))
        if not self.albedo_only:
            return self.output(h)
        for linear in self.hidden:
            plain = torch.relu(linear(plain))
        return torch.cat([self.output(plain)[:, :1], self.output(h)[:, 1:]], dim=1)


class InstantField(nn.Module):
    """G_θ: hash grid(s), a FiLM-modulated MLP and the prompt-code MLP M (see the module docstring)."""

    def __init__(self, scene: SceneConfig, conditioning: ConditioningConfig, text_dim: int,
                 categories: tuple[str, ...] = CATEGORIES):
        super().__init__()
        self.scene, self.conditioning, self.categories = scene, conditioning, tuple(categories)
        grids = len(self.categories) if conditioning.grid == "category" else 1
        self.grids = nn.ModuleList([self._grid() for _ in range(grids)])
        width = self.grids[0].output_dim
        self.hidden = nn.ModuleList()
        for _ in range(scene.hidden_layers):
            self.hidden.append(nn.Linear(width, scene.hidden_dim))
            width = scene.hidden_dim
        self.output = nn.Linear(width, 4)
        modulated = scene.hidden_dim * scene.hidden_layers
        self.code_mlp = nn.Sequential(nn.Linear(text_dim, conditioning.code_dim), nn.SiLU(),
                                      nn.Linear(conditioning.code_dim, 2 * modulated))
        with torch.no_grad():  # start unconditioned: γ = β = 0 for every prompt
            self.code_mlp[-1].weight.zero_()
            self.code_mlp[-1].bias.zero_()
            if scene.geometry == "sdf":  # start from the sphere itself, as a plain Field does
                self.output.weight[0].zero_()
                self.output.bias[0] = 0.0

    def _grid(self) -> HashGrid:
        s = self.scene
        return HashGrid(levels=s.levels, features_per_level=s.features_per_level, log2_table_size=s.log2_table_size,
                        base_resolution=s.base_resolution, max_resolution=s.max_resolution, backend=s.backend)

    def grid_index(self, prompt: str) -> int:
        """Which hash grid renders ``prompt``: its category's (``grid: category``) or the only one."""
        if len(self.grids) == 1:
            return 0
        return self.categories.index(category_of(prompt))

    def modulation(self, text: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """FiLM coefficients (γ_k, β_k), each [hidden_dim], of one prompt's token embeddings text [L, D] or
        [1, L, D]."""
        code = mean_token_embedding(text.reshape(1, *text.shape[-2:]))[0]
        gammas, betas = self.code_mlp(code.to(self.output.weight)).chunk(2)
        width = self.scene.hidden_dim
        return list(gammas.split(width)), list(betas.split(width))

    @property
    def albedo_only(self) -> bool:
        return self.conditioning.modulate == "albedo"

    def field_scene(self) -> SceneConfig:
        """The settings of the plain Field a bound prompt folds into (:meth:`to_field`): the generator's, with
        twice the MLP width for ``modulate: albedo`` (the plain and the FiLM streams side by side)."""
        return dataclasses.replace(self.scene, hidden_dim=self.scene.hidden_dim * (2 if self.albedo_only else 1))

    def _field_shell(self, grid: HashGrid, scene: SceneConfig | None = None) -> Field:
        s = scene or self.scene
        return Field(grid, hidden_dim=s.hidden_dim, hidden_layers=s.hidden_layers, blob_density=s.blob_density,
                     blob_radius=s.blob_radius, geometry=s.geometry, beta=s.sdf_beta)

    def bind(self, prompt: str, text: torch.Tensor) -> Field:
        """G_θ(y) for training: a Field sharing this generator's grid and MLP (gradients reach θ, the code MLP
        included) with ``prompt``'s FiLM coefficients from its token embeddings ``text`` [L, D]."""
        gammas, betas = self.modulation(text)
        field_ = self._field_shell(self.grids[self.grid_index(prompt)])
        field_.mlp = ModulatedMLP(self.hidden, self.output, gammas, betas, self.albedo_only)
        return field_

    @torch.no_grad()
    def to_field(self, prompt: str, text: torch.Tensor) -> Field:
        """G_θ(y) as an independent plain Field (a copy: the category grid and the MLP with FiLM folded in,
        :func:`fold_film`); it computes what :meth:`bind` computes, to float rounding."""
        gammas, betas = self.modulation(text)
        grid = self._grid().to(self.output.weight.device)
        grid.load_state_dict(self.grids[self.grid_index(prompt)].state_dict())
        field_ = self._field_shell(grid, self.field_scene()).to(self.output.weight.device)
        linears = [m for m in field_.mlp if isinstance(m, nn.Linear)]
        for index, (target, source, gamma, beta) in enumerate(zip(linears, self.hidden, gammas, betas)):
            if self.albedo_only:
                weight, bias = fold_film_pair(source.weight, source.bias, gamma, beta, first=index == 0)
            else:
                weight, bias = fold_film(source.weight, source.bias, gamma, beta)
            target.weight.copy_(weight)
            target.bias.copy_(bias)
        output_weight = self.output.weight
        if self.albedo_only:  # density from the plain half, albedo from the FiLM half
            zeros = torch.zeros_like(output_weight)
            output_weight = torch.cat([torch.cat([output_weight[:1], zeros[:1]], dim=1),
                                       torch.cat([zeros[1:], output_weight[1:]], dim=1)])
        linears[-1].weight.copy_(output_weight)
        linears[-1].bias.copy_(self.output.bias)
        return field_

    def describe(self) -> dict:
        """What a person needs to rebuild it: the scene and conditioning settings, text width, categories."""
        return {"scene": dataclasses.asdict(self.scene), "field_scene": dataclasses.asdict(self.field_scene()),
                "conditioning": dataclasses.asdict(self.conditioning),
                "text_dim": self.code_mlp[0].in_features, "categories": list(self.categories)}
