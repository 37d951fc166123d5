"""koch-explore: ask a diabetic-retinopathy CNN why it diagnoses, the way Koch asked a microbe.

Modules map to the four postulates:

* ``detector`` / ``deconvnet``  -- isolate (the DR detector and its activation network)
* ``descriptors``               -- culture (lesions cut out as pathological descriptors)
* ``synthesis``                 -- inoculate (a GAN that places descriptors on a healthy fundus)
* ``koch``                      -- re-isolate (the detector must find what was placed)

``data`` finds, checks and loads fundus data; ``phantom`` draws fundus images with exact lesion truth.
"""

__version__ = "0.1.0"
