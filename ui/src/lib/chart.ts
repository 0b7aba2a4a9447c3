// Line charts as SVG paths, from (x, y) series.
export interface Series {
  name: string;
  points: [number, number][];
}

export interface Frame {
  x0: number;
  x1: number;
  yMax: number;
}

/** The frame that holds every point (y from 0, with a little headroom). */
export function frameOf(series: Series[]): Frame {
  let x0 = Infinity;
  let x1 = -Infinity;
  let yMax = 0;
  for (const s of series)
    for (const [x, y] of s.points) {
      x0 = Math.min(x0, x);
      x1 = Math.max(x1, x);
      yMax = Math.max(yMax, y);
    }
  if (!Number.isFinite(x0)) return { x0: 0, x1: 1, yMax: 1 };
  if (x1 === x0) x1 = x0 + 1;
  return { x0, x1, yMax: yMax > 0 ? niceCeil(yMax * 1.1) : 1 };
}

/** An SVG path for `points` in a `width` × `height` box (y grows upwards). */
export function linePath(points: [number, number][], f: Frame, width: number, height: number): string {
  return points
    .map(([x, y], i) => {
      const px = ((x - f.x0) / (f.x1 - f.x0)) * width;
      const py = height - (y / f.yMax) * height;
      return `${i === 0 ? "M" : "L"}${px.toFixed(1)},${py.toFixed(1)}`;
    })
    .join(" ");
}

/** 1, 2 or 5 times a power of ten, at least `v`. */
export function niceCeil(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
