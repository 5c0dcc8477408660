"""Presentation: Plotly figures from stored records, the HTML report and static export."""
