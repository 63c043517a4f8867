"""Cohort loading and validation on the real TCGA tables, and everything fitted per fold
(bins, scaling, gene masks) on training patients only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from napari_ghanet.training.cohort import (
    CohortError,
    FeatureStore,
    read_cohort,
    read_signatures,
    read_splits,
    resolve_fold,
    slide_stem,
)
from napari_ghanet.training.cv import RunConfig, prepare_fold
from napari_ghanet.training.labels import (
    GenomicScaler,
    discretize,
    reconstruction_masks,
    risk_groups_for_masks,
    survival_bin_edges,
)
from scipy import stats

from napari_ghanet.io.features import PatchFeatures, save_features

TCGA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga"
SIG = TCGA / "signatures.csv"


@pytest.fixture(scope="module")
def blca():
    return read_cohort(TCGA / "tcga_blca_all_clean.csv.zip", SIG)


@pytest.fixture(scope="module")
def ucec():
    return read_cohort(TCGA / "tcga_ucec_all_clean.csv.zip", SIG)


def test_real_cohorts_one_row_per_patient(blca, ucec):
    assert len(blca.patients) == 373 and len(ucec.patients) == 480
    assert sum(len(s) for s in blca.patients["slide_ids"]) == 437
    assert sum(len(s) for s in ucec.patients["slide_ids"]) == 539
    assert blca.genomics.shape == (373, 2814 + 248) and blca.genomics.dtype == np.float32
    assert ucec.genomics.shape == (480, 123)
    assert blca.categories == list(read_signatures(SIG))
    # A category's features are its genes' columns in the table, all suffixes, sorted.
    sig = pd.read_csv(SIG)
    genes = set(sig["Tumor Suppressor Genes"].dropna())
    want = sorted(c for c in blca.gene_columns if c.rsplit("_", 1)[0] in genes)
    assert blca.category_columns[0] == want
    assert [blca.gene_columns[i] for i in blca.category_index[0]] == want
    table = pd.read_csv(TCGA / "tcga_blca_all_clean.csv.zip")
    row = table[table.case_id == blca.case_ids[5]].iloc[0]
    np.testing.assert_allclose(blca.genomics[5], row[blca.gene_columns].to_numpy(float), rtol=1e-6)
    assert blca.censorship[5] == row.censorship


def test_official_splits_are_patient_level(blca):
    splits = read_splits(TCGA / "splits" / "tcga_blca")
    assert [s.name for s in splits] == [f"splits_{k}" for k in range(5)]
    held_out = [c for s in splits for c in s.test]
    assert len(held_out) == len(set(held_out)) == 373
    fold = resolve_fold(blca, splits[0])
    assert len(fold.train) == 298 and len(fold.test) == 75 and fold.skipped == {}


def _write_table(tmp_path, df, name="t.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


@pytest.fixture()
def small_table(tmp_path):
    t = pd.read_csv(TCGA / "tcga_ucec_all_clean.csv.zip").head(40)
    return t


def test_missing_columns_and_nan_are_named(tmp_path, small_table):
    with pytest.raises(CohortError, match=r"lacks required column\(s\) \['censorship'\]"):
        read_cohort(_write_table(tmp_path, small_table.drop(columns="censorship")), SIG)
    bad = small_table.copy()
    bad.loc[3, "ARNT_cnv"] = np.nan
    with pytest.raises(CohortError, match=rf"NaN in genomics: column\(s\) ARNT_cnv for case\(s\) {bad.case_id[3]}"):
        read_cohort(_write_table(tmp_path, bad), SIG)
    bad = small_table.copy()
    bad["censorship"] = bad["censorship"].astype(float)
    bad.loc[0, "censorship"] = 2
    with pytest.raises(CohortError, match="censorship must be 0"):
        read_cohort(_write_table(tmp_path, bad), SIG)
    no_genes = small_table[["case_id", "slide_id", "survival_months", "censorship"]]
    with pytest.raises(CohortError, match="no gene columns"):
        read_cohort(_write_table(tmp_path, no_genes), SIG)
    sig = pd.DataFrame({"Only": ["NOTAGENE"]})
    with pytest.raises(CohortError, match=r"category\(ies\) \['Only'\] .* have no gene column"):
        read_cohort(_write_table(tmp_path, small_table), _write_table(tmp_path, sig, "s.csv"))


def test_split_errors(tmp_path, ucec):
    d = tmp_path / "splits"
    d.mkdir()
    ids = ucec.case_ids
    pd.DataFrame({"train": ids[:10], "val": ids[8:18]}).to_csv(d / "splits_0.csv")
    with pytest.raises(CohortError, match=rf"2 patient\(s\) in both train and val: {ids[8]}, {ids[9]}"):
        read_splits(d)
    pd.DataFrame({"train": ids[:10], "test": ids[10:20]}).to_csv(d / "splits_0.csv")
    with pytest.raises(CohortError, match=r"lacks column\(s\) \['val'\]"):
        read_splits(d)
    pd.DataFrame({"train": pd.Series(ids[:10] + ["TCGA-XX-0001"]),
                  "val": pd.Series(ids[10:20] + ["TCGA-XX-0002"])}).to_csv(d / "splits_0.csv")
    split = read_splits(d)[0]
    with pytest.raises(CohortError, match=r"2 case\(s\) of the split are absent from the table: "
                                          r"TCGA-XX-0001, TCGA-XX-0002.*--allow-missing"):
        resolve_fold(ucec, split)
    fold = resolve_fold(ucec, split, allow_missing=True)
    assert len(fold.train) == 10 and len(fold.test) == 10
    assert fold.skipped == {"absent_from_table": ["TCGA-XX-0001", "TCGA-XX-0002"]}


def _feature_cohort(tmp_path, ucec, n=12):
    """Feature files for the first n UCEC patients' slides, CLAM-style under h5_files/."""
    root = tmp_path / "features"
    (root / "h5_files").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        for s in ucec.patients.at[i, "slide_ids"]:
            m = int(rng.integers(3, 9))
            save_features(root / "h5_files" / f"{slide_stem(s)}.h5",
                          PatchFeatures(rng.normal(size=(m, 8)).astype(np.float32),
                                        np.arange(2 * m).reshape(m, 2),
                                        {"encoder": "unit", "encoder_spec": {"name": "unit", "dim": 8}}))
    return root


def test_features_found_by_slide_id_and_missing_ones_listed(tmp_path, ucec):
    root = _feature_cohort(tmp_path, ucec)
    store = FeatureStore(ucec, root)
    sizes = [store.bag_size(i) for i in range(12)]  # from headers, before any read
    assert not store._cache
    assert slide_stem("A.B.svs") == "A.B" and slide_stem("X.ome.tiff") == "X"
    multi = next(i for i in range(12) if len(ucec.patients.at[i, "slide_ids"]) > 1)
    bag = store.bag(multi)
    parts = [len(store.bag(multi)) for _ in range(2)]
    assert parts[0] == parts[1] == bag.shape[0] and bag.shape[1] == 8 and bag.dtype == np.float32
    assert sizes == [len(store.bag(i)) for i in range(12)]
    assert store.feature_dim == 8 and store.attrs()["encoder"] == "unit"
    from napari_ghanet.training.cohort import Split

    split = Split("s", ucec.case_ids[:10] + ucec.case_ids[20:22], ucec.case_ids[10:12])
    with pytest.raises(CohortError, match=r"slide\(s\) have no feature file") as err:
        resolve_fold(ucec, split, store)
    missing = [s for i in (20, 21) for s in ucec.patients.at[i, "slide_ids"]]
    assert all(s in str(err.value) for s in missing)
    fold = resolve_fold(ucec, split, store, allow_missing=True)
    assert len(fold.train) == 10 and sorted(fold.skipped["no_features"]) == sorted(ucec.case_ids[20:22])


def test_nan_features_are_an_error(tmp_path, ucec):
    root = _feature_cohort(tmp_path, ucec, n=1)
    slide = ucec.patients.at[0, "slide_ids"][0]
    f = np.ones((4, 8), np.float32)
    f[2, 3] = np.nan
    save_features(root / "h5_files" / f"{slide_stem(slide)}.h5", PatchFeatures(f))
    with pytest.raises(CohortError, match=rf"features file .*{slide_stem(slide)}\.h5.*NaN"):
        FeatureStore(ucec, root).bag(0)


def test_bins_are_quartiles_of_uncensored_training_patients(blca):
    months, cens = blca.months, blca.censorship
    edges = survival_bin_edges(months, cens)
    q = pd.qcut(months[cens == 0], q=4, retbins=True)[1]
    np.testing.assert_allclose(edges[1:-1], q[1:-1])
    assert edges[0] == 0 and edges[-1] == months.max()
    y = discretize(months, edges)
    # Same labels as the paper's pd.cut(right=False) on these edges.
    want = pd.cut(months, bins=np.r_[-1e-6, q[1:-1], months.max() + 1e-6], right=False, labels=False)
    np.testing.assert_array_equal(y, want)
    assert np.bincount(y[cens == 0]).tolist() == pytest.approx([len(y[cens == 0]) / 4] * 4, abs=2)
    assert discretize(np.array([1e6]), edges)[0] == 3


def test_gene_masks_welch_between_low_and_high_risk(blca):
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(blca.patients), 250, replace=False))
    months, cens = blca.months[idx], blca.censorship[idx]
    y = discretize(months, survival_bin_edges(months, cens))
    x = GenomicScaler.fit(blca.genomics[idx]).transform(blca.genomics[idx])
    masks, pvals = reconstruction_masks(x, blca.category_index, y, cens)
    low, high = risk_groups_for_masks(y, cens)
    assert np.array_equal(low, y >= 2) and np.array_equal(high, (y < 2) & (cens == 0))
    for ix, m, p in zip(blca.category_index, masks, pvals):
        j = ix[3]
        want = stats.ttest_ind(x[low, j], x[high, j], equal_var=False).pvalue
        assert p[3] == pytest.approx(want, rel=1e-4)
        assert np.array_equal(m, p < 0.05) or m.sum() == 1
    assert 0 < sum(int(m.sum()) for m in masks) < sum(len(ix) for ix in blca.category_index)
    all_masks, _ = reconstruction_masks(x, blca.category_index, y, cens, mode="all")
    assert all(m.all() for m in all_masks)


def test_fold_preprocessing_sees_training_patients_only(ucec):
    fold = resolve_fold(ucec, read_splits(TCGA / "splits" / "tcga_ucec")[2])
    cfg = RunConfig(model="snn", cohort="", signatures="", splits="")
    setup = prepare_fold(ucec, fold, cfg, None)
    tr = fold.train
    np.testing.assert_allclose(setup.bin_edges,
                               survival_bin_edges(ucec.months[tr], ucec.censorship[tr]))
    np.testing.assert_allclose(setup.scaler.mean, ucec.genomics[tr].mean(0), atol=1e-5)
    np.testing.assert_allclose(setup.train.omics.mean(0), 0, atol=1e-4)
    assert np.abs(setup.test.omics.mean(0)).max() > 1e-3  # test patients were not used
    assert setup.model_config["omic_dim"] == 123
    assert setup.train.ids == [ucec.case_ids[i] for i in tr]
    # An inner validation split comes out of the training patients, stratified.
    cfg.inner_val = 0.2
    inner = prepare_fold(ucec, fold, cfg, None)
    assert set(inner.inner.ids) | set(inner.train.ids) == set(setup.train.ids)
    assert not set(inner.inner.ids) & set(inner.train.ids)
    assert len(inner.inner) == pytest.approx(0.2 * len(tr), abs=4)
    assert inner.n_fit == len(inner.train)
