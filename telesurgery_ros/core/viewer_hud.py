"""
Draw the viewer's HUD panels into RGB images with Pillow (no display, no PyBullet).

:func:`telesurgery_ros.core.viewer.hud_lines` decides the text; :class:`PanelRenderer` lays it
out: a label column, coloured spans, colour squares, a bar on the left in the safety colour.
The PyBullet scene shows the image as the texture of a screen-fixed quad.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from telesurgery_ros.core.viewer import SWATCH

BACKGROUND = (14, 18, 24)
LABEL_COLOUR = (150, 158, 168)
# Font sizes in pixels by line style, and the line pitch as a multiple of the size.
SIZES = {'title': 17, 'state': 30, 'text': 15, 'small': 13}
PITCH = 1.3


def _font(size):
    try:
        return ImageFont.load_default(size=size)     # scalable (FreeType), Pillow >= 10.1
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()              # fixed bitmap font


class PanelRenderer:
    """Lay out HUD lines (:class:`~telesurgery_ros.core.viewer.HudLine`) on one panel."""

    def __init__(self, width, height, padding=10, bar=6):
        self.width = int(width)
        self.height = int(height)
        self.padding = int(padding)
        self.bar = int(bar)
        self.fonts = {style: _font(size) for style, size in SIZES.items()}

    def _label_width(self, lines):
        widths = [self.fonts[line.style].getlength(line.label) for line in lines if line.label]
        return int(max(widths, default=0.0)) + (12 if widths else 0)

    def render(self, lines, accent=None):
        """
        Return the panel as an RGB array (height, width, 3) of uint8.

        ``accent`` colours the bar on the left (None: no bar). Lines that do not fit are
        left out (the last drawn line is the lowest that fits).
        """
        image = Image.new('RGB', (self.width, self.height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        left = self.padding
        if accent is not None:
            draw.rectangle((0, 0, self.bar - 1, self.height - 1), fill=tuple(accent))
            left += self.bar
        labels = left + self._label_width(lines)
        for line, y in self._layout(lines):
            font = self.fonts[line.style]
            size = SIZES[line.style]
            if line.label:
                draw.text((left, y), line.label, fill=LABEL_COLOUR, font=font)
            x = labels if line.label or line.style in ('text', 'small') else left
            for text, colour in line.spans:
                if text == SWATCH:
                    side = int(size * 0.75)
                    top = y + (size - side) // 2 + 1
                    draw.rectangle((x, top, x + side, top + side), fill=tuple(colour))
                    x += side
                    continue
                draw.text((x, y), text, fill=tuple(colour), font=font)
                x += font.getlength(text)
        return np.asarray(image, np.uint8)

    def _layout(self, lines):
        """Yield (line, top y) for the lines that fit, top to bottom."""
        y = self.padding
        for line in lines:
            size = SIZES[line.style]
            if y + size > self.height - self.padding // 2:
                return
            yield line, y
            y += int(size * PITCH)

    def lines_that_fit(self, lines):
        """Return how many of ``lines`` the panel holds (the rest are left out)."""
        return sum(1 for _ in self._layout(lines))
