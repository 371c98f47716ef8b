//! Cross-validation folds: split by patient (never by vertebra), stratified by fracture
//! status, fixed by a seed.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::manifest::{Case, Status};

/// Assigns `case.fold` in `0..folds` for every case. A patient is "fractured" when any of
/// their vertebrae is; fractured and normal patients are each shuffled by `seed` and dealt
/// round-robin, so every fold gets its share of both. The deal of the second group starts
/// where the first one stopped, so fold sizes differ by at most one patient.
pub fn assign_folds(cases: &mut [Case], folds: usize, seed: u64) {
    assert!(folds >= 1, "at least one fold");
    // BTreeMap: patient order must not depend on hashing, or the seed would not fix the split.
    let mut fractured_by_patient: BTreeMap<&str, bool> = BTreeMap::new();
    for case in cases.iter() {
        let fractured = case.vertebrae.iter().any(|v| v.status == Status::Fractured);
        *fractured_by_patient.entry(case.patient.as_str()).or_default() |= fractured;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = 0;
    for group in [true, false] {
        let mut patients: Vec<&str> =
            fractured_by_patient.iter().filter(|(_, f)| **f == group).map(|(p, _)| *p).collect();
        patients.shuffle(&mut rng);
        for p in patients {
            fold_of.insert(p.to_string(), next % folds);
            next += 1;
        }
    }
    for case in cases.iter_mut() {
        case.fold = Some(fold_of[&case.patient]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{BoxJson, Vertebra};
    use std::collections::BTreeSet;

    fn case(id: usize, patient: usize, fractured: bool) -> Case {
        let status = if fractured { Status::Fractured } else { Status::Normal };
        Case {
            id: format!("c{id}"),
            patient: format!("p{patient}"),
            ct: "ct.nii.gz".into(),
            shape: [8, 8, 8],
            vertebra_labels: None,
            fracture_mask: None,
            mask_source: None,
            labeled: true,
            fold: None,
            vertebrae: vec![Vertebra {
                level: "L1".parse().unwrap(),
                body_box: BoxJson { x: [0, 8], y: [0, 8], z: [0, 8] },
                status,
                fracture_boxes: vec![],
                slice_ranges: vec![],
            }],
        }
    }

    /// 23 patients (8 fractured), some with two cases of differing status.
    fn cohort() -> Vec<Case> {
        let mut cases: Vec<Case> = (0..23).map(|p| case(p, p, p % 3 == 0)).collect();
        cases.extend((0..6).map(|p| case(100 + p, p, p == 1)));
        cases
    }

    #[test]
    fn folds_are_disjoint_by_patient_and_stratified() {
        let mut cases = cohort();
        assign_folds(&mut cases, 5, 7);
        let mut folds_of_patient: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for c in &cases {
            folds_of_patient.entry(&c.patient).or_default().insert(c.fold.unwrap());
        }
        assert!(folds_of_patient.values().all(|f| f.len() == 1), "a patient spans folds: {folds_of_patient:?}");

        // Patient p1 has a fractured second case: 9 fractured patients, 14 normal.
        let fractured_patients = |fold| {
            let mut fractured: BTreeSet<&str> = BTreeSet::new();
            for c in cases.iter().filter(|c| c.fold == Some(fold)) {
                if c.vertebrae[0].status == Status::Fractured {
                    fractured.insert(&c.patient);
                }
            }
            fractured.len()
        };
        let per_fold: Vec<usize> = (0..5).map(fractured_patients).collect();
        assert_eq!(per_fold.iter().sum::<usize>(), 9);
        assert!(per_fold.iter().all(|&n| n == 1 || n == 2), "{per_fold:?}");
        let patients_per_fold: Vec<usize> =
            (0..5).map(|f| folds_of_patient.values().filter(|s| s.contains(&f)).count()).collect();
        assert!(patients_per_fold.iter().all(|&n| n == 4 || n == 5), "{patients_per_fold:?}");
    }

    #[test]
    fn the_seed_fixes_the_split() {
        let folds = |seed| {
            let mut cases = cohort();
            assign_folds(&mut cases, 5, seed);
            cases.iter().map(|c| c.fold.unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(folds(7), folds(7));
        assert_ne!(folds(7), folds(8));
    }
}
