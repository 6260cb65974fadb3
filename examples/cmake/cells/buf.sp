* buffer: two inverters
.subckt buf A Y VDD VSS
M1 N A VDD VDD pmos W=2u L=0.13u
M2 N A VSS VSS nmos W=1u L=0.13u
M3 Y N VDD VDD pmos W=4u L=0.13u
M4 Y N VSS VSS nmos W=2u L=0.13u
.ends
