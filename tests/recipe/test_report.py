"""The report's tables: a cell holding "|" (e.g. |Δ|) stays one cell."""

from kamado.recipe.report import markdown_table


def test_a_pipe_in_a_cell_does_not_split_the_row():
    table = markdown_table([("max |Δ logit|", "a | b"), ("plain", "1")])
    rows = table.splitlines()[2:]
    # unescaped pipes delimit cells: each row has exactly three (start, middle, end)
    assert [r.replace("\\|", "").count("|") for r in rows] == [3, 3]
    assert rows[0] == "| max \\|Δ logit\\| | a \\| b |"
