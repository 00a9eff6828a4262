"""Which tile the one-row GEMV takes for a matrix (engine/gemv.py), decided on the host."""
from engine import gemv


def test_tall_matrices_keep_the_probed_four_row_tile():
    assert gemv.tile_for(4096, 7168) == (gemv.BLOCK_N, gemv.BLOCK_K, gemv.WARPS)
    assert gemv.tile_for(gemv.SHORT_ROWS, 512) == (4, 512, 4)


def test_a_short_matrix_gets_one_row_a_program_and_its_whole_row_at_once():
    # V3's router, 256 x 7168: 256 programs (~2 an H200 SM), 7168 columns in one masked step
    assert gemv.tile_for(256, 7168) == (1, 8192, 8)
    assert gemv.tile_for(64, 384) == (1, 512, 4)  # a tiny model's router: fewer warps
    assert gemv.tile_for(8, 3) == (1, 256, 4)


def test_very_long_rows_are_walked_in_steps_of_the_widest_tile():
    rows, cols, warps = gemv.tile_for(256, 20000)
    assert (rows, cols, warps) == (1, gemv.ROW_TILE_MAX_K, 8)
