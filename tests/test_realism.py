"""realism.py: the two-sample test on images whose answer is known -- built-in sample paintings
against other ones (it cannot tell them apart), against themselves blurred by 1 px or with a planted
2-px checkerboard (it must) -- seeded; the degradations and the calibration command; and the gaps beside
the test (Fréchet distance, Lab moments, the share of a gap outputs closed)."""
import json
import math

import numpy as np
import pytest

import realism
import sample_data
from conftest import assert_real_picture

STYLES = sorted(sample_data.COURSE_TRAIN_COUNTS)


@pytest.fixture(scope="module")
def paintings():
    """Two disjoint sets of 150 built-in sample paintings at 32 px, the same styles in both."""
    render = lambda first: np.stack([np.asarray(sample_data.render_sample_image(STYLES[i % len(STYLES)], first + i, 32))
                                     for i in range(150)])
    return render(0), render(100_000)


def checkerboard(images_u8, amplitude=12):
    """A planted artefact: +-amplitude grey levels in a 2-px-period checkerboard (a generator's mesh)."""
    sign = np.indices(images_u8.shape[1:3]).sum(0) % 2 * 2 - 1
    return np.clip(images_u8.astype(int) + amplitude * sign[None, :, :, None], 0, 255).astype(np.uint8)


def test_real_paintings_against_other_real_paintings_are_near_chance(paintings):
    r = realism.two_sample_test(*paintings, seed=0)
    assert 0.4 <= r["accuracy"] <= 0.6 and 0.03 < r["ci95"] < 0.07  # 300 held-out guesses: +-5.7% at 50%
    assert all(0.35 <= a <= 0.65 for a in r["by_group"].values()), r["by_group"]


def test_a_blur_of_one_pixel_is_told_apart(paintings):
    fake, real = paintings
    r = realism.two_sample_test(realism.degrade(fake, "blur1"), real, seed=0)
    assert r["accuracy"] >= 0.9 and r["by_group"]["sharpness"] >= 0.9, r


def test_a_planted_checkerboard_is_told_apart(paintings):
    fake, real = paintings
    r = realism.two_sample_test(checkerboard(fake), real, seed=0)
    assert r["accuracy"] >= 0.95, r


def test_a_seeded_run_gives_the_same_number_twice(paintings):
    fake, real = paintings[0][:60], paintings[1][:60]
    groups = np.arange(60) // 3  # renderings of one source stay in one fold
    runs = [realism.two_sample_test(realism.degrade(fake, "blur0.5"), real, groups, seed=3) for _ in range(2)]
    assert runs[0] == runs[1]


def test_each_degradation_changes_the_images_and_keeps_their_shape(paintings):
    images = paintings[0][:8]
    for kind in realism.DEGRADATIONS:
        out = realism.degrade(images, kind)
        assert out.dtype == np.uint8 and out.shape == images.shape
        assert np.array_equal(out, images) == (kind == "none"), kind
    with pytest.raises(ValueError, match="unknown degradation 'sepia'"):
        realism.degrade(images, "sepia")


@pytest.mark.slow  # 8 tests
def test_calibration_command_writes_a_table_of_every_degradation(sample_root, tmp_path):
    realism.main([f"{sample_root}/train", "--size", "32", "--n", "40", "--seeds", "1", "--cache-dir", "",
                  "--out", str(tmp_path / "cal")])
    table = json.loads((tmp_path / "cal" / "calibration.json").read_text())["tests"]["40"]
    assert list(table) == list(realism.DEGRADATIONS)
    assert table["none"]["accuracy"] < 0.7 and table["blur1.5"]["accuracy"] > 0.9
    assert_real_picture(tmp_path / "cal" / "calibration.png")


# ---- the gaps: Fréchet distance, Lab moments, the share of a gap closed

def test_frechet_distance_of_gaussians_by_hand():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (20000, 2))
    b = a * 2 + np.array([3.0, 0.0])  # means 3 apart; covariance 4I against I: trace 1+1 + 4+4 - 2*(2+2)
    assert realism.frechet_distance(a, b) == pytest.approx(9 + 2, rel=0.03)
    assert realism.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_frechet_gap_is_zero_for_the_inputs_and_about_one_for_other_real_paintings():
    rng = np.random.default_rng(0)
    styles = np.repeat(np.arange(4), 60)
    centres = rng.normal(0, 3, (4, 5))
    draw = lambda s: centres[s] + rng.normal(0, 1, (len(s), 5))  # "real paintings of style s"
    reference, real = draw(styles), draw(styles)
    inputs = draw((styles + 1) % 4)  # images of other styles, aimed at `styles`
    closed = lambda outputs: realism.gap_closed(inputs, outputs, styles, reference, styles, real, styles,
                                                realism.frechet_distance)
    assert closed(inputs) == 0
    assert abs(closed(draw(styles)) - 1) < 0.1  # a fresh real sample: the 100% point, within sampling noise
    assert 0.3 < closed((inputs + draw(styles)) / 2 * np.sqrt(2)) < 0.9  # half way in the mean: partly closed
    # inputs no farther from the styles than real paintings (e.g. one image per style): nothing to close, nan
    no_gap = realism.gap_closed(inputs, inputs, styles, reference, styles, inputs, styles, realism.frechet_distance)
    assert math.isnan(no_gap)


def test_lab_moments_of_known_colours_by_hand():
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert realism.lab_moments(red)[0] == pytest.approx([53.24, 80.09, 67.20, 0, 0, 0], abs=0.05)
    half = np.zeros((1, 4, 4, 3), np.uint8)  # half white (L 100), half black (L 0): mean L 50, std 50
    half[:, :2] = 255
    assert realism.lab_moments(half)[0] == pytest.approx([50, 0, 0, 50, 0, 0], abs=0.01)
    # a shift of grey towards blue moves b (yellow-blue) down and leaves the spread at zero
    grey, bluer = np.full((1, 2, 2, 3), 128, np.uint8), np.full((1, 2, 2, 3), [118, 128, 148], np.uint8)
    m_grey, m_blue = realism.lab_moments(grey)[0], realism.lab_moments(bluer)[0]
    assert m_grey[1:3] == pytest.approx([0, 0], abs=0.01) and m_blue[2] < -10 and abs(m_blue[0] - m_grey[0]) < 2
    assert m_blue[3:] == pytest.approx([0, 0, 0], abs=1e-9)


def tinted(rng, styles, tint):
    """16x16 images of random greys with each style's colour cast `tint` (n, 3) added."""
    return np.clip(rng.integers(60, 120, (len(styles), 16, 16, 3)) + tint[:, None, None], 0, 255).astype(np.uint8)


def test_lab_gap_closed_follows_a_colour_shift_towards_the_style():
    """Outputs moved part of the way to the target style's colours close that share of the Lab gap."""
    rng = np.random.default_rng(2)
    styles = np.repeat(np.arange(2), 40)
    tint = np.array([[60, 0, -40], [-40, 30, 60]])[styles]
    base = tinted(rng, styles, 0 * tint)
    reference, real = realism.lab_moments(tinted(rng, styles, tint)), realism.lab_moments(tinted(rng, styles, tint))
    closed = lambda out: realism.gap_closed(realism.lab_moments(base), realism.lab_moments(out), styles, reference,
                                            styles, real, styles, realism.mean_distance)
    shifted = lambda t: np.clip(base.astype(int) + t[:, None, None], 0, 255).astype(np.uint8)
    assert closed(base) == 0
    assert closed(shifted(tint)) > 0.9
    assert 0.35 < closed(shifted(tint // 2)) < 0.65  # half the shift: about half
    assert closed(shifted(-tint // 2)) < -0.3  # the other way: the gap grows


def test_realism_reference_tells_the_lab_gap_of_each_style():
    """per_style gives each target style's Lab gap alone: a model that paints one style's colours and not
    the other's closes about all of the one and none of the other, which the summed gap hides."""
    rng = np.random.default_rng(3)
    styles = np.repeat(np.arange(2), 40)
    tint = np.array([[60, 0, -40], [-40, 30, 60]])[styles]
    ref = realism.RealismReference(lambda u8: u8.reshape(len(u8), -1)[:, :32].astype(float), tinted(rng, styles, tint),
                                   styles, tinted(rng, styles, tint), styles, seed=0, pca_dim=4)
    base = tinted(rng, styles, 0 * tint)
    half = np.where((styles == 0)[:, None, None, None], np.clip(base.astype(int) + tint[:, None, None], 0, 255),
                    base).astype(np.uint8)
    r = ref.measure(base, half, np.arange(80) % 10, styles, per_style=True)
    assert r["lab_gap_closed_per_style"][0] > 0.8 and abs(r["lab_gap_closed_per_style"][1]) < 0.1
    assert 0.1 < r["lab_gap_closed"] < 0.9 and 0 <= r["two_sample"]["accuracy"] <= 1
    assert "lab_gap_closed_per_style" not in ref.measure(base, half, np.arange(80) % 10, styles)
