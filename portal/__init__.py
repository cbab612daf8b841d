"""The students' web space ("Mon espace Génération #HDF"), first-card requests, "Où utiliser ma carte ?"."""
