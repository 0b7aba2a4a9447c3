//! Non-maximum suppression: hard NMS, and Soft-NMS (Bodla, Singh, Chellappa, Davis,
//! "Soft-NMS — Improving Object Detection With One Line of Code", ICCV 2017), which
//! decays the scores of overlapping boxes instead of removing them, so two faces that
//! overlap heavily are both kept when both are confident.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A box `[x1, y1, x2, y2]` with its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub b: [f32; 4],
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Remove every box whose IoU with a kept one is at least `iou_threshold`.
    Hard,
    /// Scale the score by `1 − IoU` when IoU exceeds `iou_threshold`.
    Linear,
    /// Scale the score by `exp(−IoU² / sigma)`.
    Gaussian,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NmsConfig {
    pub method: Method,
    /// Nt: the IoU above which hard and linear act.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub iou_threshold: f32,
    /// The gaussian decay's width.
    #[schemars(range(min = 0.0))]
    pub sigma: f32,
    /// Boxes whose (decayed) score falls below this are dropped.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub score_threshold: f32,
}

impl Default for NmsConfig {
    fn default() -> Self {
        NmsConfig {
            method: Method::Gaussian,
            iou_threshold: 0.3,
            sigma: 0.5,
            score_threshold: 0.5,
        }
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// The indices of the `limit` best-scoring boxes (ties to the earlier box), in input
/// order: every index when there are no more than `limit`. Suppression costs up to the
/// number of boxes times the number kept, so the boxes it is given are bounded first.
pub fn best(boxes: &[Scored], limit: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..boxes.len()).collect();
    if idx.len() > limit {
        let order =
            |a: &usize, b: &usize| boxes[*b].score.total_cmp(&boxes[*a].score).then(a.cmp(b));
        if limit > 0 {
            idx.select_nth_unstable_by(limit - 1, order);
        }
        idx.truncate(limit);
        idx.sort_unstable();
    }
    idx
}

/// The kept boxes, best first, with their final scores, at most `max_kept` of them
/// (the first `max_kept` that an unbounded run keeps); `index` maps each back to the
/// input (for landmarks).
pub fn suppress(boxes: &[Scored], cfg: &NmsConfig, max_kept: usize) -> Vec<(usize, Scored)> {
    let mut live: Vec<(usize, Scored)> = boxes.iter().copied().enumerate().collect();
    let mut kept = Vec::new();
    while !live.is_empty() && kept.len() < max_kept {
        // The best remaining box (first of equals, as a stable sort would give).
        let mut best = 0;
        for (i, (_, s)) in live.iter().enumerate() {
            if s.score > live[best].1.score {
                best = i;
            }
        }
        let m = live.swap_remove(best);
        if m.1.score < cfg.score_threshold {
            break; // every other box scores lower still
        }
        live.retain_mut(|(_, b)| {
            let o = iou(&m.1.b, &b.b);
            match cfg.method {
                Method::Hard => o < cfg.iou_threshold,
                Method::Linear => {
                    if o > cfg.iou_threshold {
                        b.score *= 1.0 - o;
                    }
                    b.score >= cfg.score_threshold
                }
                // No overlap leaves the score as it is (exp(0) = 1): skip the exp.
                Method::Gaussian if o > 0.0 => {
                    b.score *= (-(o * o) / cfg.sigma).exp();
                    b.score >= cfg.score_threshold
                }
                Method::Gaussian => b.score >= cfg.score_threshold,
            }
        });
        kept.push(m);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(method: Method) -> NmsConfig {
        NmsConfig {
            method,
            iou_threshold: 0.3,
            sigma: 0.5,
            score_threshold: 0.3,
        }
    }

    fn b(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Scored {
        Scored {
            b: [x1, y1, x2, y2],
            score,
        }
    }

    #[test]
    fn iou_by_hand() {
        // 10×10 boxes offset by 5 in x: intersection 50, union 150.
        assert!((iou(&[0., 0., 10., 10.], &[5., 0., 15., 10.]) - 1. / 3.).abs() < 1e-6);
        assert_eq!(iou(&[0., 0., 1., 1.], &[2., 2., 3., 3.]), 0.0);
        assert_eq!(iou(&[0., 0., 4., 4.], &[0., 0., 4., 4.]), 1.0);
    }

    /// Two faces, one partly in front of the other: IoU 1/3. Hard NMS at 0.3 merges them;
    /// Soft-NMS keeps both, the second with a decayed score computed by hand.
    #[test]
    fn two_overlapping_faces_hard_merges_soft_keeps() {
        let faces = [b(0., 0., 10., 10., 0.9), b(5., 0., 15., 10., 0.8)];
        let hard = suppress(&faces, &cfg(Method::Hard), usize::MAX);
        assert_eq!(hard.len(), 1);
        assert_eq!(hard[0].0, 0);

        let linear = suppress(&faces, &cfg(Method::Linear), usize::MAX);
        assert_eq!(linear.len(), 2);
        // 0.8 × (1 − 1/3) = 0.5333…
        assert!((linear[1].1.score - 0.8 * (2. / 3.)).abs() < 1e-6);

        let gaussian = suppress(&faces, &cfg(Method::Gaussian), usize::MAX);
        assert_eq!(gaussian.len(), 2);
        // 0.8 × exp(−(1/3)² / 0.5) = 0.8 × exp(−2/9) = 0.64065…
        assert!((gaussian[1].1.score - 0.8 * (-2.0f32 / 9.0).exp()).abs() < 1e-6);
        assert_eq!((gaussian[0].0, gaussian[1].0), (0, 1));
    }

    /// Near-duplicates of one face (IoU 0.9) are removed by every method: Soft-NMS
    /// decays them below the threshold.
    #[test]
    fn duplicates_of_one_face_go_in_every_method() {
        // IoU of these two: 9/10.
        let dup = [b(0., 0., 10., 10., 0.9), b(0., 0., 10., 9., 0.85)];
        for m in [Method::Hard, Method::Linear, Method::Gaussian] {
            let kept = suppress(&dup, &cfg(m), usize::MAX);
            assert_eq!(kept.len(), 1, "{m:?}: {kept:?}");
        }
        // linear: 0.85 × 0.1 = 0.085 < 0.3; gaussian: 0.85 × exp(−0.81/0.5) = 0.168 < 0.3.
    }

    #[test]
    fn linear_leaves_boxes_below_nt_alone_and_order_is_by_score() {
        let boxes = [
            b(0., 0., 10., 10., 0.6),
            b(20., 20., 30., 30., 0.95),
            b(0., 0., 10., 10., 0.2),
        ];
        let kept = suppress(&boxes, &cfg(Method::Linear), usize::MAX);
        let got: Vec<(usize, f32)> = kept.iter().map(|(i, s)| (*i, s.score)).collect();
        assert_eq!(got, vec![(1, 0.95), (0, 0.6)]);
    }

    /// A gaussian of width 0 (the schema allows it) removes every box that overlaps a
    /// kept one and leaves the others alone: it made 0/0 of a box apart, a NaN score,
    /// and kept one face an image.
    #[test]
    fn a_gaussian_of_no_width_keeps_faces_apart() {
        let faces = [
            b(0., 0., 10., 10., 0.9),
            b(20., 0., 30., 10., 0.8),
            b(5., 0., 15., 10., 0.7),
        ];
        let kept = suppress(
            &faces,
            &NmsConfig {
                sigma: 0.0,
                ..cfg(Method::Gaussian)
            },
            usize::MAX,
        );
        let got: Vec<(usize, f32)> = kept.iter().map(|(i, s)| (*i, s.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.8)]);
    }

    /// `best` keeps the highest scores, ties to the earlier box, in input order; with no
    /// more boxes than the limit it keeps them all.
    #[test]
    fn the_best_boxes_by_score_ties_to_the_earlier() {
        let scores = [0.5, 0.9, 0.7, 0.9, 0.2, 0.7, 0.7];
        let boxes: Vec<Scored> = scores.iter().map(|&s| b(0., 0., 1., 1., s)).collect();
        assert_eq!(best(&boxes, 1), vec![1]);
        assert_eq!(best(&boxes, 3), vec![1, 2, 3]);
        assert_eq!(best(&boxes, 4), vec![1, 2, 3, 5]);
        assert_eq!(best(&boxes, 7), (0..7).collect::<Vec<_>>());
        assert_eq!(best(&boxes, 100), (0..7).collect::<Vec<_>>());
        assert!(best(&boxes, 0).is_empty());
    }

    /// A bound on the boxes kept gives the first of those an unbounded run keeps.
    #[test]
    fn a_bounded_run_keeps_the_first_of_an_unbounded_one() {
        // A row of boxes each overlapping the next by a third, scores falling and rising.
        let boxes: Vec<Scored> = (0..40)
            .map(|i| {
                let x = i as f32 * 5.;
                b(x, 0., x + 10., 10., 0.5 + 0.4 * ((i * 7 % 11) as f32 / 11.))
            })
            .collect();
        for m in [Method::Hard, Method::Linear, Method::Gaussian] {
            let all = suppress(&boxes, &cfg(m), usize::MAX);
            assert!(all.len() > 10, "{m:?}: {}", all.len());
            for k in [0, 1, 5, 10] {
                assert_eq!(suppress(&boxes, &cfg(m), k), all[..k], "{m:?} at {k}");
            }
        }
    }
}
