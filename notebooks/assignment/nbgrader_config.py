"""nbgrader's configuration for the lesson as an assignment (README.md here). This folder is a course root:
``source/koch_lesson/koch_lesson.ipynb`` (a copy of notebooks/06_lesson_koch_for_cnns.ipynb) becomes
``release/koch_lesson/koch_lesson.ipynb``, and ``submitted/<student>/koch_lesson/`` is autograded. The gradebook
is ``gradebook.db`` here (nbgrader's default); tests/test_assignment.py uses this file in a temporary root."""

c = get_config()  # noqa: F821 (nbgrader defines it when it reads this file)

c.CourseDirectory.course_id = "koch-explore"
# Autograding runs every cell of a submission; the Koch test cell of section 4 is the longest (under a minute on
# one core in the class profile). nbgrader's default, 30 s a cell, would cut it off on a slow hub.
c.Execute.timeout = 600
