"""Render ``sft_loss_equation.png`` in the style of PML's equation images (Computer
Modern, black on white, cropped, 88 px for one line):
``python -m pml_sft.upstream.equation``."""

from pathlib import Path

EQUATION = (
    r"$x' = R_{ij}\,x = x - \frac{\langle c_i + c_j,\, x\rangle}{1 + \langle c_i, c_j"
    r"\rangle}\,(c_i + c_j) + 2\,\langle c_i, x\rangle\, c_j,\qquad y' = j$"
)


def render(path, fontsize=29, dpi=100):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plt.rcParams["mathtext.fontset"] = "cm"
    figure = plt.figure()
    figure.text(0, 0, EQUATION, fontsize=fontsize)
    figure.savefig(
        path, dpi=dpi, transparent=True, bbox_inches="tight", pad_inches=0.05
    )
    plt.close(figure)
    from PIL import Image

    image = Image.open(path)  # opaque, as PML's images are
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    Image.alpha_composite(white, image.convert("RGBA")).save(path)


if __name__ == "__main__":
    render(Path(__file__).resolve().parent / "sft_loss_equation.png")
