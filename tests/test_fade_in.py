"""FadeIn: the join scales of paths being faded in (0 -> 1 over a number of steps)."""

import pytest
import torch

from plasticnet.models.fade_in import FadeIn

CANDIDATES = [(0, 1), (0, 2), (1, 2), (1, 3)]


def test_a_started_fade_rises_by_one_step_at_a_time_to_exactly_one_then_is_forgotten():
    fade = FadeIn()
    assert not fade and torch.equal(fade.scales(CANDIDATES), torch.ones(4)), "nothing fading: every scale is 1"
    fade.start([(0, 2)], steps=4)
    assert fade and (0, 2) in fade and (0, 1) not in fade
    seen = [fade.scales(CANDIDATES)[1].item()]
    for _ in range(4):
        assert (0, 2) in fade
        fade.advance()
        seen.append(fade.scales(CANDIDATES)[1].item())
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert not fade and (0, 2) not in fade, "at scale 1 the path is an ordinary one"
    assert torch.equal(fade.scales(CANDIDATES), torch.ones(4))


def test_fades_of_different_lengths_run_side_by_side_and_other_paths_keep_scale_one():
    fade = FadeIn()
    fade.start([(0, 1), (1, 3)], steps=2)
    fade.advance()
    fade.start([(1, 2)], steps=3)
    assert fade.scales(CANDIDATES).tolist() == pytest.approx([0.5, 1.0, 0.0, 0.5])
    fade.advance()
    assert fade.scales(CANDIDATES).tolist() == pytest.approx([1.0, 1.0, 1 / 3, 1.0])
    assert [p in fade for p in CANDIDATES] == [False, False, True, False]
    fade.advance()
    fade.advance()
    assert not fade and fade.scales(CANDIDATES).tolist() == [1.0] * 4


def test_restarting_a_fading_path_starts_it_again_from_zero():
    fade = FadeIn()
    fade.start([(0, 1)], steps=2)
    fade.advance()
    fade.start([(0, 1)], steps=4)
    assert fade.scales([(0, 1)]).item() == 0.0
    fade.advance()
    assert fade.scales([(0, 1)]).item() == 0.25


def test_a_one_step_fade_is_over_after_one_advance():
    fade = FadeIn()
    fade.start([(1, 2)], steps=1)
    assert fade.scales([(1, 2)]).item() == 0.0
    fade.advance()
    assert not fade and fade.scales([(1, 2)]).item() == 1.0


@pytest.mark.parametrize("steps", [0, -3, 1.5, True, "4"])
def test_start_rejects_steps_that_are_not_a_positive_int(steps):
    fade = FadeIn()
    with pytest.raises(ValueError, match="steps: expected a positive int"):
        fade.start([(0, 1)], steps)
    assert not fade, "a rejected start leaves nothing fading"
