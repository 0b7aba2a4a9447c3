// Regions come in the original image's pixels; the preview draws them in an SVG whose
// viewBox is the image's natural size, laid over the scaled image.
export interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
  label: string;
  score: number;
  landmarks: { x: number; y: number }[];
}

interface RegionLike {
  x?: number;
  y?: number;
  width?: number;
  height?: number;
  label?: string;
  score?: number;
  landmarks?: { x?: number; y?: number }[];
}

/** Every region of every filter of every stage, labelled with the filter's alias. */
export function collectBoxes(
  stages: { filters?: { alias?: string; regions?: RegionLike[] }[] }[] | undefined,
): Box[] {
  const out: Box[] = [];
  for (const s of stages ?? []) {
    for (const f of s.filters ?? []) {
      for (const r of f.regions ?? []) {
        out.push({
          x: r.x ?? 0,
          y: r.y ?? 0,
          width: r.width ?? 0,
          height: r.height ?? 0,
          score: r.score ?? 0,
          label: [f.alias, r.label].filter(Boolean).join(": "),
          landmarks: (r.landmarks ?? []).map((p) => ({ x: p.x ?? 0, y: p.y ?? 0 })),
        });
      }
    }
  }
  return out;
}
