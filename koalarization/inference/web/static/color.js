// Saturation in the browser: scale a and b of CIE Lab at constant L, as the server's `saturation` does.
//
// The server sends the colorized photo once, at saturation 1. Changing saturation must keep each pixel's
// lightness L (the photo's own L) and its hue, and only scale its chroma: in Lab that is a* and b* times s.
// Blending the colour image with a gray one in sRGB would not do that: sRGB is not perceptually uniform,
// so a 50 % blend changes the lightness of saturated colours (a blue and its gray differ in L after the
// sRGB round trip) and shifts hue slightly. Lab scaling is exact and matches the server's output.
//
// The constants mirror koalarization/color.py (scikit-image's: sRGB primaries, D65 white, 2 degree observer);
// tests/test_browser.py checks that the page's result equals the server's at the same saturation.
"use strict";

const KoalaColor = (() => {
  const XYZ_FROM_RGB = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
  ];
  const WHITE = [0.95047, 1.0, 1.08883];
  const EPSILON = 0.008856, KAPPA = 7.787, OFFSET = 16 / 116, F_EPSILON = 0.2068966;
  const FIT_STEPS = 7; // as the server's gamut fitting: chroma found to 1 %

  function invert3(m) {
    const [[a, b, c], [d, e, f], [g, h, i]] = m;
    const det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
    return [
      [(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
      [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
      [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det],
    ];
  }
  const RGB_FROM_XYZ = invert3(XYZ_FROM_RGB);

  // sRGB byte -> linear light, for all 256 values once.
  const TO_LINEAR = new Float64Array(256);
  for (let v = 0; v < 256; v++) {
    const c = v / 255;
    TO_LINEAR[v] = c > 0.04045 ? Math.pow((c + 0.055) / 1.055, 2.4) : c / 12.92;
  }
  const f = (t) => (t > EPSILON ? Math.cbrt(t) : KAPPA * t + OFFSET);
  const fInverse = (t) => (t > F_EPSILON ? t * t * t : (t - OFFSET) / KAPPA);
  const toByte = (linear) => {
    const c = linear > 0.0031308 ? 1.055 * Math.pow(linear, 1 / 2.4) - 0.055 : 12.92 * linear;
    return Math.round(Math.min(Math.max(c, 0), 1) * 255);
  };

  /** sRGB bytes -> [L, a, b]. */
  function rgbToLab(r, g, b) {
    const lr = TO_LINEAR[r], lg = TO_LINEAR[g], lb = TO_LINEAR[b];
    const m = XYZ_FROM_RGB;
    const fx = f((m[0][0] * lr + m[0][1] * lg + m[0][2] * lb) / WHITE[0]);
    const fy = f((m[1][0] * lr + m[1][1] * lg + m[1][2] * lb) / WHITE[1]);
    const fz = f((m[2][0] * lr + m[2][1] * lg + m[2][2] * lb) / WHITE[2]);
    return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)];
  }

  /** Lab -> linear RGB, not clipped (values outside [0, 1] are out of the sRGB gamut). */
  function labToLinear(L, a, b, out) {
    const fy = (L + 16) / 116;
    const x = fInverse(a / 500 + fy) * WHITE[0];
    const y = fInverse(fy) * WHITE[1];
    const z = fInverse(Math.max(fy - b / 200, 0)) * WHITE[2]; // skimage clips negative z the same way
    const m = RGB_FROM_XYZ;
    out[0] = m[0][0] * x + m[0][1] * y + m[0][2] * z;
    out[1] = m[1][0] * x + m[1][1] * y + m[1][2] * z;
    out[2] = m[2][0] * x + m[2][1] * y + m[2][2] * z;
    return out;
  }
  const inside = (c) => c[0] > 0 && c[0] < 1 && c[1] > 0 && c[1] < 1 && c[2] > 0 && c[2] < 1;

  /**
   * RGBA bytes `src` -> `dst` with chroma times `s` (L and hue kept). Colours pushed out of the sRGB gamut
   * get the largest chroma that fits (bisection), as on the server, instead of clipping (which moves L).
   */
  function saturate(src, dst, s) {
    const lin = [0, 0, 0];
    for (let i = 0; i < src.length; i += 4) {
      const [L, a0, b0] = rgbToLab(src[i], src[i + 1], src[i + 2]);
      const a = a0 * s, b = b0 * s;
      dst[i + 3] = src[i + 3];
      if (a === 0 && b === 0) { // gray stays exactly gray
        const g = toByte(labToLinear(L, 0, 0, lin)[1]);
        dst[i] = dst[i + 1] = dst[i + 2] = g;
        continue;
      }
      let k = 1;
      if (!inside(labToLinear(L, a, b, lin))) {
        let low = 0, high = 1;
        for (let step = 0; step < FIT_STEPS; step++) {
          const mid = (low + high) / 2;
          if (inside(labToLinear(L, a * mid, b * mid, lin))) low = mid; else high = mid;
        }
        k = low;
        labToLinear(L, a * k, b * k, lin);
      }
      dst[i] = toByte(lin[0]);
      dst[i + 1] = toByte(lin[1]);
      dst[i + 2] = toByte(lin[2]);
    }
    return dst;
  }

  return { rgbToLab, labToLinear, saturate };
})();
